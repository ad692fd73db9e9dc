"""Dense matrix helpers over lists of rows."""


def _shape(m):
    if not m or not m[0] or any(len(r) != len(m[0]) for r in m):
        raise ValueError("empty or ragged matrix")
    return len(m), len(m[0])


def transpose(m):
    _shape(m)
    return [list(col) for col in zip(*m)]


def matmul(a, b):
    ra, ca = _shape(a)
    rb, cb = _shape(b)
    if ca != rb:
        raise ValueError(f"cannot multiply {ra}x{ca} by {rb}x{cb}")
    bt = transpose(b)
    return [[sum(x * y for x, y in zip(row, col)) for col in bt] for row in a]


def identity(n):
    return [[1 if i == j else 0 for j in range(n)] for i in range(n)]


def determinant(m):
    r, c = _shape(m)
    if r != c:
        raise ValueError("determinant of a non-square matrix")
    if r == 1:
        return m[0][0]
    total = 0
    for j in range(c):
        minor = [row[:j] + row[j + 1:] for row in m[1:]]
        sign = -1 if j % 2 else 1
        total += sign * m[0][j] * determinant(minor)
    return total


def power(m, k):
    r, c = _shape(m)
    if r != c:
        raise ValueError("power of a non-square matrix")
    if k < 0:
        raise ValueError("negative exponent")
    result = identity(r)
    base = [row[:] for row in m]
    while k:
        if k & 1:
            result = matmul(result, base)
        base = matmul(base, base)
        k >>= 1
    return result
