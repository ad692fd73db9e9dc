import pytest

from csvstats import column_stats, parse_line


def test_plain_fields():
    assert parse_line("a,b,c") == ["a", "b", "c"]
    assert parse_line("a,,c,") == ["a", "", "c", ""]
    assert parse_line("") == [""]


def test_quoted_fields():
    assert parse_line('"x, y",z') == ["x, y", "z"]
    assert parse_line('"say ""hi""",2') == ['say "hi"', "2"]


def test_unterminated_quote():
    with pytest.raises(ValueError):
        parse_line('"abc,d')


def test_column_stats():
    text = "name,price,qty\napple,1.5,3\npear,2.5,\n\n\"fig, dried\",4,1\n"
    s = column_stats(text, "price")
    assert s["count"] == 3
    assert s["min"] == 1.5
    assert s["max"] == 4
    assert s["mean"] == pytest.approx(8 / 3)


def test_skips_non_numeric_and_missing():
    text = "id,v\n1,n/a\n2,\n3,10\n4\n"
    assert column_stats(text, "v")["count"] == 1
    assert column_stats("id,v\n1,x\n", "v") == {"count": 0, "min": None,
                                                "max": None, "mean": None}


def test_unknown_column():
    with pytest.raises(KeyError):
        column_stats("a,b\n1,2\n", "c")
