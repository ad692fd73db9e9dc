import pytest

from lru import LRUCache


def test_put_and_get():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    assert c.get("b") == 2
    assert c.get("zz") is None
    assert c.get("zz", 7) == 7
    assert len(c) == 2


def test_evicts_least_recently_put():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("c", 3)
    assert "a" not in c
    assert c.keys() == ["b", "c"]


def test_get_refreshes_recency():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.get("a")
    c.put("c", 3)
    assert "a" in c
    assert "b" not in c
    assert c.keys() == ["a", "c"]


def test_update_refreshes_and_does_not_evict():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("a", 10)
    assert len(c) == 2
    assert c.keys() == ["b", "a"]
    c.put("c", 3)
    assert c.get("a") == 10
    assert "b" not in c


def test_contains_does_not_touch():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert "a" in c
    c.put("c", 3)
    assert "a" not in c


def test_bad_capacity():
    with pytest.raises(ValueError):
        LRUCache(0)


def test_many_operations_capacity_one():
    c = LRUCache(1)
    for i in range(1000):
        c.put(i, i * i)
        assert c.keys() == [i]
    assert c.get(999) == 998001
