import pytest

from rpn import RPNError, evaluate


def test_addition_and_multiplication():
    assert evaluate("2 3 +") == 5
    assert evaluate("2 3 4 * +") == 14
    assert isinstance(evaluate("2 3 *"), int)


def test_operand_order():
    assert evaluate("10 4 -") == 6
    assert evaluate("8 2 /") == 4.0
    assert evaluate("1 2 swap -") == 1


def test_negative_and_decimal_numbers():
    assert evaluate("-3 4 +") == 1
    assert evaluate("1.5 2 *") == pytest.approx(3.0)


def test_dup():
    assert evaluate("5 dup *") == 25


def test_errors():
    for bad in ("", "1 +", "1 2", "2 x +", "1 0 /", "swap"):
        with pytest.raises(RPNError):
            evaluate(bad)


def test_longer_expression():
    assert evaluate("5 1 2 + 4 * + 3 -") == 14
