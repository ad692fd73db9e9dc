class RPNError(Exception):
    pass


def evaluate(expr):
    raise NotImplementedError
