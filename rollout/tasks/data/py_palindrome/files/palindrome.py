def is_palindrome(s: str) -> bool:
    raise NotImplementedError


def longest_palindromic_substring(s: str) -> str:
    raise NotImplementedError
