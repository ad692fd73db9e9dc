def is_palindrome(s: str) -> bool:
    chars = [c.lower() for c in s if c.isalnum()]
    return chars == chars[::-1]


def longest_palindromic_substring(s: str) -> str:
    best_start, best_len = 0, 0
    for center in range(2 * len(s) - 1):
        lo = center // 2
        hi = lo + center % 2
        while lo >= 0 and hi < len(s) and s[lo] == s[hi]:
            lo -= 1
            hi += 1
        length = hi - lo - 1
        if length > best_len:
            best_start, best_len = lo + 1, length
    return s[best_start:best_start + best_len]
