def are_anagrams(a, b):
    raise NotImplementedError


def group_anagrams(words):
    raise NotImplementedError
