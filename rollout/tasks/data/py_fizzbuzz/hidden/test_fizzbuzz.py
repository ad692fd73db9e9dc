from fizzbuzz import fizzbuzz


def test_first_five():
    assert fizzbuzz(5) == ["1", "2", "Fizz", "4", "Buzz"]


def test_fifteen_is_fizzbuzz():
    assert fizzbuzz(15)[-1] == "FizzBuzz"
    assert fizzbuzz(30)[29] == "FizzBuzz"


def test_length_and_plain_numbers():
    out = fizzbuzz(100)
    assert len(out) == 100
    assert out[96] == "97"
    assert out[98] == "Fizz"


def test_non_positive_is_empty():
    assert fizzbuzz(0) == []
    assert fizzbuzz(-3) == []


def test_fizz_and_buzz_only_multiples():
    out = fizzbuzz(14)
    assert out[8] == "Fizz"
    assert out[9] == "Buzz"
    assert out[13] == "14"
