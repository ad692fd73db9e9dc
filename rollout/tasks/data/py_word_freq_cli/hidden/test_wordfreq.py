import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(args, stdin=""):
    return subprocess.run([sys.executable, os.path.join(HERE, "wordfreq.py")] + args,
                          input=stdin, capture_output=True, text=True, cwd=HERE,
                          timeout=30)


def test_counts_from_stdin():
    p = run([], "the cat and the hat. The END\n")
    assert p.returncode == 0
    assert p.stdout.splitlines()[0] == "3 the"


def test_ties_alphabetical_and_top():
    p = run(["--top", "3"], "b a c b a c d\n")
    assert p.returncode == 0
    assert p.stdout.splitlines() == ["2 a", "2 b", "2 c"]


def test_apostrophes_and_punctuation():
    p = run([], "Don't stop -- 'quoted' words, don't!\n")
    assert p.stdout.splitlines() == ["2 don't", "1 quoted", "1 stop", "1 words"]


def test_default_top_is_ten():
    text = " ".join(f"w{chr(97 + i)}" for i in range(15))
    p = run([], text)
    assert len(p.stdout.splitlines()) == 10


def test_reads_files(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("apple banana\n")
    b.write_text("banana cherry banana\n")
    p = run(["--top", "2", str(a), str(b)])
    assert p.returncode == 0
    assert p.stdout.splitlines() == ["3 banana", "1 apple"]


def test_missing_file(tmp_path):
    p = run([str(tmp_path / "nope.txt")])
    assert p.returncode == 1
    assert "nope.txt" in p.stderr
    assert p.stdout == ""


def test_bad_top():
    assert run(["--top", "0"], "x").returncode == 2
    assert run(["--top", "abc"], "x").returncode == 2
