#!/usr/bin/env python3
"""Print the most frequent words of the input. See the task statement."""
import argparse
import collections
import re
import sys

from cli_utils import die, read_inputs

_WORD = re.compile(r"[A-Za-z']+")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def words(text):
    for raw in _WORD.findall(text):
        w = raw.strip("'").lower()
        if w:
            yield w


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=positive_int, default=10)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    try:
        text = read_inputs(args.files)
    except FileNotFoundError as e:
        die(f"cannot read {e.filename}")
    counts = collections.Counter(words(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for word, n in ranked[:args.top]:
        print(f"{n} {word}")


if __name__ == "__main__":
    main()
