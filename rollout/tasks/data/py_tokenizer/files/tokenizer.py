from collections import namedtuple

Token = namedtuple("Token", ["kind", "value", "pos"])


class TokenizeError(Exception):
    def __init__(self, message, pos):
        super().__init__(f"{message} at {pos}")
        self.pos = pos


def tokenize(text):
    raise NotImplementedError
