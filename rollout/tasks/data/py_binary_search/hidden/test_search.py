import bisect
import random

from search import count_in_range, lower_bound, upper_bound


def test_empty():
    assert lower_bound([], 5) == 0
    assert upper_bound([], 5) == 0
    assert count_in_range([], 0, 10) == 0


def test_lower_bound_with_duplicates():
    xs = [1, 2, 2, 2, 5, 9]
    assert lower_bound(xs, 2) == 1
    assert lower_bound(xs, 3) == 4
    assert lower_bound(xs, 0) == 0
    assert lower_bound(xs, 10) == 6


def test_upper_bound_with_duplicates():
    xs = [1, 2, 2, 2, 5, 9]
    assert upper_bound(xs, 2) == 4
    assert upper_bound(xs, 9) == 6
    assert upper_bound(xs, 0) == 0


def test_count_in_range():
    xs = [1, 3, 3, 4, 8, 10]
    assert count_in_range(xs, 3, 8) == 4
    assert count_in_range(xs, 5, 7) == 0
    assert count_in_range(xs, 10, 1) == 0
    assert count_in_range(xs, -100, 100) == 6


def test_random_against_bisect():
    rng = random.Random(7)
    for _ in range(300):
        xs = sorted(rng.randint(0, 20) for _ in range(rng.randint(0, 30)))
        t = rng.randint(-2, 22)
        assert lower_bound(xs, t) == bisect.bisect_left(xs, t)
        assert upper_bound(xs, t) == bisect.bisect_right(xs, t)
