"""Dense matrix helpers over lists of rows."""


def transpose(m):
    raise NotImplementedError


def matmul(a, b):
    raise NotImplementedError


def identity(n):
    raise NotImplementedError


def determinant(m):
    raise NotImplementedError


def power(m, k):
    raise NotImplementedError
