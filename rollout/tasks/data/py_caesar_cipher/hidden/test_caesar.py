from caesar import crack, decrypt, encrypt


def test_lowercase_wraps():
    assert encrypt("xyz", 3) == "abc"
    assert encrypt("abc", 1) == "bcd"


def test_uppercase_wraps_and_keeps_case():
    assert encrypt("XYZ", 3) == "ABC"
    assert encrypt("Hello, World!", 5) == "Mjqqt, Btwqi!"


def test_negative_and_large_shifts():
    assert encrypt("abc", -1) == "zab"
    assert encrypt("abc", 27) == "bcd"
    assert decrypt(encrypt("Round Trip 123", 1000), 1000) == "Round Trip 123"


def test_non_letters_unchanged():
    assert encrypt("123 !?-_\n", 7) == "123 !?-_\n"


def test_crack():
    secret = encrypt("The quick brown fox jumps over the lazy dog near the tree", 11)
    assert crack(secret) == 11
    assert crack("") == 0
