from palindrome import is_palindrome, longest_palindromic_substring


def test_simple_palindromes():
    assert is_palindrome("racecar")
    assert is_palindrome("")
    assert is_palindrome("a")
    assert not is_palindrome("ab")


def test_ignores_case_and_punctuation():
    assert is_palindrome("A man, a plan, a canal: Panama")
    assert is_palindrome("No 'x' in Nixon")
    assert not is_palindrome("race a car")


def test_digits_count():
    assert is_palindrome("12-21")
    assert not is_palindrome("123")


def test_longest_substring():
    assert longest_palindromic_substring("babad") == "bab"
    assert longest_palindromic_substring("cbbd") == "bb"
    assert longest_palindromic_substring("") == ""
    assert longest_palindromic_substring("x") == "x"


def test_longest_substring_is_case_sensitive():
    assert longest_palindromic_substring("Abba") == "bb"
    assert longest_palindromic_substring("forgeeksskeegfor") == "geeksskeeg"
