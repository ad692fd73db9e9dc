class RPNError(Exception):
    pass


def _number(token):
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return None


def _pop(stack, n, token):
    if len(stack) < n:
        raise RPNError(f"{token!r} needs {n} operand(s)")
    if n == 1:
        return stack.pop()
    right = stack.pop()
    left = stack.pop()
    return left, right


def evaluate(expr):
    stack = []
    for token in expr.split():
        if token in ("+", "-", "*", "/"):
            left, right = _pop(stack, 2, token)
            if token == "+":
                stack.append(left + right)
            elif token == "-":
                stack.append(left - right)
            elif token == "*":
                stack.append(left * right)
            else:
                if right == 0:
                    raise RPNError("division by zero")
                stack.append(left / right)
        elif token == "dup":
            v = _pop(stack, 1, token)
            stack += [v, v]
        elif token == "swap":
            left, right = _pop(stack, 2, token)
            stack += [right, left]
        else:
            v = _number(token)
            if v is None:
                raise RPNError(f"unknown token {token!r}")
            stack.append(v)
    if len(stack) != 1:
        raise RPNError(f"expected one result, stack holds {len(stack)}")
    return stack[0]
