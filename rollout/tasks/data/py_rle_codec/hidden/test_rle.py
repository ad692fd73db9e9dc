import pytest

from rle import decode, encode


def test_encode_basic():
    assert encode("aaabcc") == "3a1b2c"
    assert encode("") == ""
    assert encode("z") == "1z"


def test_encode_long_runs():
    assert encode("x" * 12 + "y") == "12x1y"
    assert encode(" " * 100) == "100 "


def test_decode_basic():
    assert decode("3a1b2c") == "aaabcc"
    assert decode("") == ""


def test_decode_multi_digit_counts():
    assert decode("12x1y") == "x" * 12 + "y"
    assert decode("10a10b") == "a" * 10 + "b" * 10


def test_round_trip():
    for s in ["hello  world", "aaaaaaaaaaaaaaaabbb!", "ab" * 20, "-__--"]:
        assert decode(encode(s)) == s


def test_errors():
    with pytest.raises(ValueError):
        encode("a1")
    for bad in ("a", "3", "3a4", "0a"):
        with pytest.raises(ValueError):
            decode(bad)
