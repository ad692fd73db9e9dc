import unittest

from wrap import justify, wrap


class WrapTest(unittest.TestCase):
    def test_basic_greedy(self):
        self.assertEqual(wrap("the quick brown fox jumps", 10),
                         ["the quick", "brown fox", "jumps"])

    def test_exact_fit(self):
        self.assertEqual(wrap("aaaa bbbb", 9), ["aaaa bbbb"])
        self.assertEqual(wrap("aaaa bbbb", 8), ["aaaa", "bbbb"])

    def test_whitespace_and_empty(self):
        self.assertEqual(wrap("  a\n\tb  ", 5), ["a b"])
        self.assertEqual(wrap("   ", 5), [])

    def test_long_words_are_split(self):
        self.assertEqual(wrap("ab abcdefghij cd", 4),
                         ["ab", "abcd", "efgh", "ij", "cd"])

    def test_bad_width(self):
        with self.assertRaises(ValueError):
            wrap("x", 0)


class JustifyTest(unittest.TestCase):
    def test_justify_distributes_left_first(self):
        self.assertEqual(justify("a b c dddd", 8), ["a   b  c", "dddd    "])
        self.assertEqual(justify("aa b c dd eeeeee", 8),
                         ["aa  b  c", "dd      ", "eeeeee  "])

    def test_single_word_line_left_aligned(self):
        self.assertEqual(justify("hello world", 6), ["hello ", "world "])


if __name__ == "__main__":
    unittest.main()
