from collections import namedtuple

Token = namedtuple("Token", ["kind", "value", "pos"])


class TokenizeError(Exception):
    def __init__(self, message, pos):
        super().__init__(f"{message} at {pos}")
        self.pos = pos


_TWO_CHAR_OPS = ("==", "!=", "<=", ">=")
_ONE_CHAR_OPS = "+-*/^=<>"
_SINGLE = {"(": "LPAREN", ")": "RPAREN", ",": "COMMA"}


def tokenize(text):
    tokens = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isdigit():
            start = i
            while i < n and text[i].isdigit():
                i += 1
            if i + 1 < n and text[i] == "." and text[i + 1].isdigit():
                i += 1
                while i < n and text[i].isdigit():
                    i += 1
                tokens.append(Token("NUM", float(text[start:i]), start))
            else:
                tokens.append(Token("NUM", int(text[start:i]), start))
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            tokens.append(Token("IDENT", text[start:i], start))
        elif text[i:i + 2] in _TWO_CHAR_OPS:
            tokens.append(Token("OP", text[i:i + 2], i))
            i += 2
        elif c in _ONE_CHAR_OPS:
            tokens.append(Token("OP", c, i))
            i += 1
        elif c in _SINGLE:
            tokens.append(Token(_SINGLE[c], c, i))
            i += 1
        else:
            raise TokenizeError(f"unexpected character {c!r}", i)
    return tokens
