import pytest

from bank import Account, InsufficientFunds


def test_deposit_and_withdraw():
    a = Account("ann", 100)
    a.deposit(50)
    a.withdraw(30)
    assert a.balance == 120


def test_withdraw_whole_balance():
    a = Account("ann", 70)
    a.withdraw(70)
    assert a.balance == 0


def test_overdraft_is_refused_without_change():
    a = Account("ann", 10)
    with pytest.raises(InsufficientFunds):
        a.withdraw(11)
    assert a.balance == 10
    assert a.history() == []


def test_invalid_amounts():
    a = Account("ann", 10)
    for bad in (0, -5, 1.5, "3", True):
        with pytest.raises(ValueError):
            a.deposit(bad)
        with pytest.raises(ValueError):
            a.withdraw(bad)
    with pytest.raises(ValueError):
        Account("bob", -1)


def test_transfer_moves_money_and_records_both_sides():
    a, b = Account("ann", 100), Account("bob")
    a.transfer(b, 40)
    assert (a.balance, b.balance) == (60, 40)
    assert a.history() == [("transfer_out", 40)]
    assert b.history() == [("transfer_in", 40)]


def test_failed_transfer_is_atomic():
    a, b = Account("ann", 5), Account("bob", 1)
    with pytest.raises(InsufficientFunds):
        a.transfer(b, 6)
    assert (a.balance, b.balance) == (5, 1)
    with pytest.raises(ValueError):
        a.transfer(a, 1)
    assert a.balance == 5
    assert a.history() == [] and b.history() == []


def test_balance_is_read_only_and_history_is_a_copy():
    a = Account("ann", 5)
    with pytest.raises(AttributeError):
        a.balance = 100
    a.deposit(1)
    h = a.history()
    h.append(("deposit", 999))
    assert a.history() == [("deposit", 1)]
