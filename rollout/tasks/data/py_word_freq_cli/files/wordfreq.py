#!/usr/bin/env python3
"""Print the most frequent words of the input. See the task statement."""


def main(argv=None):
    raise NotImplementedError("wordfreq is not written yet")


if __name__ == "__main__":
    main()
