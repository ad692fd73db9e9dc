import pytest

from intervals import merge, total_length


def test_empty_and_single():
    assert merge([]) == []
    assert merge([(1, 3)]) == [(1, 3)]


def test_overlapping_unsorted():
    assert merge([(8, 10), (1, 3), (2, 6), (15, 18)]) == [(1, 6), (8, 10), (15, 18)]


def test_touching_intervals_merge():
    assert merge([(1, 2), (2, 3)]) == [(1, 3)]
    assert merge([(5, 5), (0, 5)]) == [(0, 5)]


def test_contained_interval():
    assert merge([(1, 10), (2, 3), (4, 5)]) == [(1, 10)]


def test_negative_and_disjoint():
    assert merge([(-5, -1), (0, 1)]) == [(-5, -1), (0, 1)]


def test_input_not_modified():
    data = [(3, 4), (1, 2)]
    merge(data)
    assert data == [(3, 4), (1, 2)]


def test_bad_interval():
    with pytest.raises(ValueError):
        merge([(1, 2), (5, 4)])


def test_total_length():
    assert total_length([(1, 3), (2, 5), (10, 11)]) == 5
    assert total_length([]) == 0
