import pytest

from tokenizer import Token, TokenizeError, tokenize


def kinds(text):
    return [t.kind for t in tokenize(text)]


def test_empty_and_whitespace():
    assert tokenize("") == []
    assert tokenize("  \t\n ") == []


def test_numbers():
    assert tokenize("42") == [Token("NUM", 42, 0)]
    toks = tokenize("3.14 7")
    assert toks[0] == Token("NUM", 3.14, 0)
    assert isinstance(toks[0].value, float)
    assert toks[1] == Token("NUM", 7, 5)
    assert isinstance(toks[1].value, int)


def test_identifiers_and_positions():
    toks = tokenize("foo_1 + _bar")
    assert toks == [Token("IDENT", "foo_1", 0), Token("OP", "+", 6),
                    Token("IDENT", "_bar", 8)]


def test_two_char_operators():
    assert [t.value for t in tokenize("a<=b>=c==d!=e<f>g")] == [
        "a", "<=", "b", ">=", "c", "==", "d", "!=", "e", "<", "f", ">", "g"]


def test_call_expression():
    assert kinds("max(x, 2^3)") == ["IDENT", "LPAREN", "IDENT", "COMMA", "NUM",
                                    "OP", "NUM", "RPAREN"]


def test_errors_report_position():
    with pytest.raises(TokenizeError) as e:
        tokenize("1 + $")
    assert e.value.pos == 4
    with pytest.raises(TokenizeError) as e:
        tokenize("a ! b")
    assert e.value.pos == 2
