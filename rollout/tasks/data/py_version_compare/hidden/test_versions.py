import pytest

from versions import compare, sort_versions


def test_equal():
    assert compare("1.2.3", "1.2.3") == 0
    assert compare("1.2", "1.2.0") == 0
    assert compare("1.2.0.0", "1.2") == 0


def test_numeric_not_lexicographic():
    assert compare("1.10", "1.9") == 1
    assert compare("1.9", "1.10") == -1
    assert compare("2.0", "10.0") == -1


def test_prerelease():
    assert compare("1.0.0-rc1", "1.0.0") == -1
    assert compare("1.0.0", "1.0.0-alpha") == 1
    assert compare("1.0.0-alpha", "1.0.0-beta") == -1


def test_malformed():
    for bad in ("", "1..2", "a.b", "1.2-", "1.-2"):
        with pytest.raises(ValueError):
            compare(bad, "1.0")


def test_sort_versions():
    vs = ["1.10", "1.2", "1.0.0-rc1", "1.9.9", "0.9", "1.0"]
    assert sort_versions(vs) == ["0.9", "1.0.0-rc1", "1.0", "1.2", "1.9.9", "1.10"]
    assert vs[0] == "1.10"
