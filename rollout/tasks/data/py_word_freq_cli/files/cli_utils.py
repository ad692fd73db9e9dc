"""Small helpers shared by command-line tools in this repository."""
import sys


def die(message, status=1):
    """Print `message` to stderr and exit with `status`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def read_inputs(paths):
    """Concatenated text of `paths`, or of stdin when `paths` is empty.

    Raises FileNotFoundError naming the first missing path.
    """
    if not paths:
        return sys.stdin.read()
    chunks = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            chunks.append(f.read())
    return "\n".join(chunks)
