"""A small JSON parser (no json module)."""


class ParseError(ValueError):
    pass


def parse(text):
    raise NotImplementedError
