import pytest

from shop.inventory import Inventory
from shop.models import Item, OutOfStock


def stocked():
    inv = Inventory()
    inv.add("A1", "apple", 50, 10)
    inv.add("B2", "bread", 300, 2)
    inv.add("C3", "cheese", 900, 1)
    return inv


def test_add_and_quantity():
    inv = stocked()
    inv.add("A1", "renamed", 999, 5)
    assert inv.quantity("A1") == 15
    assert inv.quantity("ZZ") == 0
    assert inv.total_value() == 15 * 50 + 600 + 900


def test_add_validation():
    inv = Inventory()
    with pytest.raises(ValueError):
        inv.add("X", "x", 10, 0)
    with pytest.raises(ValueError):
        inv.add("X", "x", -1, 1)


def test_remove_and_delete_at_zero():
    inv = stocked()
    inv.remove("B2", 2)
    assert inv.quantity("B2") == 0
    assert all(i.sku != "B2" for i in inv.low_stock(100))
    with pytest.raises(KeyError):
        inv.remove("B2")


def test_remove_out_of_stock_unchanged():
    inv = stocked()
    with pytest.raises(OutOfStock) as e:
        inv.remove("C3", 2)
    assert e.value.have == 1
    assert inv.quantity("C3") == 1


def test_low_stock_sorted():
    inv = stocked()
    assert inv.low_stock(2) == [Item("B2", "bread", 300, 2), Item("C3", "cheese", 900, 1)]
    assert inv.low_stock(0) == []


def test_order_all_or_nothing():
    inv = stocked()
    with pytest.raises(OutOfStock):
        inv.order([("A1", 3), ("C3", 2)])
    assert inv.quantity("A1") == 10
    with pytest.raises(KeyError):
        inv.order([("A1", 1), ("NOPE", 1)])
    assert inv.quantity("A1") == 10
    inv.order([("A1", 3), ("C3", 1)])
    assert inv.quantity("A1") == 7
    assert inv.quantity("C3") == 0


def test_order_counts_repeated_lines_together():
    inv = stocked()
    with pytest.raises(OutOfStock):
        inv.order([("B2", 1), ("B2", 2)])
    assert inv.quantity("B2") == 2
