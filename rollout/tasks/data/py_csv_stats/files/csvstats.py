def parse_line(line):
    raise NotImplementedError


def column_stats(text, column):
    raise NotImplementedError
