import pytest

from roman import from_roman, to_roman


def test_simple_values():
    assert to_roman(1) == "I"
    assert to_roman(3) == "III"
    assert to_roman(8) == "VIII"
    assert to_roman(2023) == "MMXXIII"


def test_subtractive_forms():
    assert to_roman(4) == "IV"
    assert to_roman(9) == "IX"
    assert to_roman(40) == "XL"
    assert to_roman(90) == "XC"
    assert to_roman(400) == "CD"
    assert to_roman(1994) == "MCMXCIV"
    assert to_roman(3999) == "MMMCMXCIX"


def test_round_trip_all():
    for n in range(1, 4000):
        assert from_roman(to_roman(n)) == n


def test_to_roman_range():
    for bad in (0, -1, 4000):
        with pytest.raises(ValueError):
            to_roman(bad)


def test_from_roman_values():
    assert from_roman("XIV") == 14
    assert from_roman("MDCLXVI") == 1666


def test_from_roman_rejects_invalid():
    for bad in ("", "IIII", "IC", "VX", "abc", "xiv", "MMMM", "IIV"):
        with pytest.raises(ValueError):
            from_roman(bad)
