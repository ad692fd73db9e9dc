def lower_bound(xs, target):
    raise NotImplementedError


def upper_bound(xs, target):
    raise NotImplementedError


def count_in_range(xs, lo, hi):
    raise NotImplementedError
