from anagrams import are_anagrams, group_anagrams


def test_are_anagrams():
    assert are_anagrams("listen", "silent")
    assert are_anagrams("Dormitory", "dirty room")
    assert not are_anagrams("abc", "abd")
    assert not are_anagrams("aab", "abb")


def test_group_basic():
    assert group_anagrams(["eat", "tea", "tan", "ate", "nat", "bat"]) == [
        ["ate", "eat", "tea"], ["nat", "tan"], ["bat"]]


def test_group_empty():
    assert group_anagrams([]) == []


def test_group_case_and_spaces():
    assert group_anagrams(["Listen", "silent", "enlist", "Google"]) == [
        ["Listen", "enlist", "silent"], ["Google"]]


def test_ties_by_first_word_and_duplicates():
    assert group_anagrams(["zz", "b", "a", "b"]) == [["b", "b"], ["a"], ["zz"]]
