import functools


def _parse(v):
    core, sep, pre = v.partition("-")
    if not core or (sep and not pre):
        raise ValueError(f"malformed version {v!r}")
    parts = core.split(".")
    if any(not p.isdigit() for p in parts):
        raise ValueError(f"malformed version {v!r}")
    nums = [int(p) for p in parts]
    while len(nums) > 1 and nums[-1] == 0:
        nums.pop()
    return nums, pre


def _cmp(x, y):
    return (x > y) - (x < y)


def compare(a: str, b: str) -> int:
    na, pa = _parse(a)
    nb, pb = _parse(b)
    width = max(len(na), len(nb))
    na += [0] * (width - len(na))
    nb += [0] * (width - len(nb))
    c = _cmp(na, nb)
    if c:
        return c
    if pa and not pb:
        return -1
    if pb and not pa:
        return 1
    return _cmp(pa, pb)


def sort_versions(versions):
    return sorted(versions, key=functools.cmp_to_key(compare))
