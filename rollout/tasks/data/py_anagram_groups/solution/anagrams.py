from collections import defaultdict


def _key(word):
    return "".join(sorted(word.lower().replace(" ", "")))


def are_anagrams(a, b):
    return _key(a) == _key(b)


def group_anagrams(words):
    groups = defaultdict(list)
    for w in words:
        groups[_key(w)].append(w)
    result = [sorted(g) for g in groups.values()]
    result.sort(key=lambda g: (-len(g), g[0]))
    return result
