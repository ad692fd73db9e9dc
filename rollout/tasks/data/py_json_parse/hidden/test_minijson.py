import pytest

from minijson import ParseError, parse


def test_literals():
    assert parse("true") is True
    assert parse("false") is False
    assert parse("null") is None
    assert parse("  42 ") == 42


def test_numbers():
    assert parse("-7") == -7
    assert isinstance(parse("10"), int)
    assert parse("2.5") == 2.5
    assert parse("1e3") == 1000.0
    assert isinstance(parse("1E-2"), float)
    assert parse("0") == 0


def test_strings_and_escapes():
    assert parse('"hi"') == "hi"
    assert parse(r'"a\"b\\c\/d"') == 'a"b\\c/d'
    assert parse(r'"line\nnext\ttab"') == "line\nnext\ttab"
    assert parse(r'"\u00e9\u0041"') == "\u00e9A"


def test_nested_structures():
    text = '{"a": [1, 2, {"b": null}], "c": {"d": [true, false]}, "e": []}'
    assert parse(text) == {"a": [1, 2, {"b": None}], "c": {"d": [True, False]},
                           "e": []}
    assert parse("{}") == {}
    assert parse("[[[]]]") == [[[]]]


def test_malformed_inputs():
    for bad in ("", "[1, 2", "[1, 2,]", '{"a": 1,}', '"abc', "01", "1.",
                "tru", "[1] x", "{a: 1}", "'x'", "-", '"\\q"'):
        with pytest.raises(ParseError):
            parse(bad)


def test_parse_error_is_value_error():
    with pytest.raises(ValueError):
        parse("nope")
