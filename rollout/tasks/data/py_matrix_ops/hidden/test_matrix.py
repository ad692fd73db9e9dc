import pytest

from matrix import determinant, identity, matmul, power, transpose


def test_transpose():
    assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]
    assert transpose([[7]]) == [[7]]


def test_matmul():
    a = [[1, 2], [3, 4]]
    b = [[5, 6], [7, 8]]
    assert matmul(a, b) == [[19, 22], [43, 50]]
    assert matmul([[1, 2, 3]], [[1], [1], [1]]) == [[6]]
    assert matmul(identity(2), a) == a


def test_matmul_shape_errors():
    with pytest.raises(ValueError):
        matmul([[1, 2]], [[1, 2]])
    with pytest.raises(ValueError):
        matmul([[1, 2], [3]], [[1], [2]])
    with pytest.raises(ValueError):
        matmul([], [[1]])


def test_determinant_small():
    assert determinant([[5]]) == 5
    assert determinant([[1, 2], [3, 4]]) == -2


def test_determinant_3x3_and_4x4():
    assert determinant([[2, 0, 1], [1, 3, 2], [1, 1, 2]]) == 6
    assert determinant([[6, 1, 1], [4, -2, 5], [2, 8, 7]]) == -306
    m = [[1, 0, 2, -1], [3, 0, 0, 5], [2, 1, 4, -3], [1, 0, 5, 0]]
    assert determinant(m) == 30
    with pytest.raises(ValueError):
        determinant([[1, 2, 3], [4, 5, 6]])


def test_power():
    fib = [[1, 1], [1, 0]]
    assert power(fib, 0) == identity(2)
    assert power(fib, 1) == fib
    assert power(fib, 10) == [[89, 55], [55, 34]]
    with pytest.raises(ValueError):
        power(fib, -1)


def test_inputs_not_modified():
    a = [[1, 2], [3, 4]]
    power(a, 5)
    determinant(a)
    transpose(a)
    assert a == [[1, 2], [3, 4]]
