def wrap(text, width):
    raise NotImplementedError


def justify(text, width):
    raise NotImplementedError
