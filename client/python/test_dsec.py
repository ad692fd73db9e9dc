"""The Python module against a local cluster: runs, typed failures, files,
groups, asyncio, trajectories and the verl-style reward function."""
import asyncio
import os
import sys

import pytest

import dsec

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "examples"))


def test_run_keeps_state_and_types_failures(client):
    sb = client.create_sandbox(memory_mb=256)
    r = sb.run("echo hi > /root/f; cat /root/f")
    assert r.ok and r.exit_code == 0 and r.stdout == b"hi\n"
    r = sb.run(["sh", "-c", "exit 7"])
    assert not r.ok and r.kind == "exited" and r.exit_code == 7
    r = sb.run("sleep 10", timeout=0.3)
    assert r.timed_out and r.kind == "timed_out"
    r = sb.run("python3 -c 'print(sum(range(10)))'")
    assert r.stdout_text == "45\n"
    with pytest.raises(ValueError):
        sb.run("true", timeout=-1)
    sb.delete()
    with pytest.raises(dsec.SandboxLost):
        sb.run("true")
    # SandboxLost is an InfraError: a trainer masks both.
    assert issubclass(dsec.SandboxLost, dsec.InfraError)


def test_files_round_trip(client):
    sb = client.create_sandbox()
    sb.write_file("/root/a/b.txt", "héllo")
    sb.write_file("/root/bin.dat", bytes(range(256)))
    assert sb.read_file("/root/a/b.txt").decode() == "héllo"
    assert sb.read_file("/root/bin.dat") == bytes(range(256))
    names = [e["path"] for e in sb.list_files("/root/a")]
    assert names == ["/root/a/b.txt"]
    with pytest.raises(dsec.InfraError):
        sb.read_file("/root/missing")
    sb.delete()


def test_group_run_all_and_fork(client):
    g = client.create_group(4, memory_mb=256)
    assert len(g) == 4
    results = g.run_all("echo $((2+3))")
    assert [r.stdout for r in results] == [b"5\n"] * 4
    g[0].write_file("/root/prefix", "shared")
    forks = client.fork(g[0], 3)
    assert [r.stdout for r in forks.run_all("cat /root/prefix")] == \
        [b"shared"] * 3
    forks.delete()
    g.delete()


def test_asyncio_runs_concurrently(client):
    g = client.create_group(4, memory_mb=256)

    async def main():
        tasks = [m.run_async("sleep 0.5; echo done") for m in g.members
                 for _ in range(2)]
        return await asyncio.gather(*tasks)

    import time
    start = time.time()
    results = asyncio.run(main())
    elapsed = time.time() - start
    assert all(r.stdout == b"done\n" for r in results)
    assert len(results) == 8
    # Eight half-second sleeps in parallel, not in series.
    assert elapsed < 3.5
    g.delete()


def test_trajectory_fast_forwards(client, tmp_path):
    log = str(tmp_path / "t.dtl")
    t = dsec.Trajectory(client, log, "py-traj", memory_mb=256)
    first = t.run("head -c8 /dev/urandom | od -An -tx8")
    t.write_file("/root/x", "1")
    del t  # the rollout "died"
    t = dsec.Trajectory(client, log, "py-traj")
    assert t.logged_steps == 2
    again = t.run("head -c8 /dev/urandom | od -An -tx8")
    assert again.replayed and again.stdout == first.stdout
    t.write_file("/root/x", "1")
    assert t.read_file("/root/x") == b"1"
    t.close()


BAR = "\uff5c"


def dsml_call(name, **params):
    body = "".join(
        f'<{BAR}DSML{BAR}parameter name="{k}" string="true">{v}'
        f'</{BAR}DSML{BAR}parameter>' for k, v in params.items())
    return (f'<{BAR}DSML{BAR}invoke name="{name}">{body}'
            f'</{BAR}DSML{BAR}invoke>')


def dsml_block(*calls):
    return (f"Let me check.\n<{BAR}DSML{BAR}tool_calls>" + "".join(calls) +
            f"</{BAR}DSML{BAR}tool_calls>")


def test_dsml_parse_without_a_cluster():
    r = dsec.dsml.parse(dsml_block(dsml_call("bash", command="ls <dir>")))
    assert r["error"] is None
    assert r["content"] == "Let me check.\n"
    assert r["calls"] == [{"name": "bash", "params": {"command": "ls <dir>"}}]
    bad = dsec.dsml.parse(dsml_block(dsml_call("bash", command="x"))[:-5])
    assert bad["error"] is not None and bad["error"]["message"]


def test_toolbox_runs_model_output_in_a_sandbox(client):
    sb = client.create_sandbox(memory_mb=256)
    # In order: the second call reads what the first wrote.
    box = dsec.ToolBox(sb, max_parallel=1)
    assert "bash" in box.prompt()
    out = box.run_text(dsml_block(
        dsml_call("write_file", path="/root/a.py", content="print(6*7)\n"),
        dsml_call("bash", command="python3 /root/a.py")))
    assert not out["infra_failed"]
    assert [r["tool"] for r in out["results"]] == ["write_file", "bash"]
    assert "42" in out["results"][1]["output"]
    assert out["rendered"].count("<tool_result>") == 2
    broken = box.run_text(dsml_block(dsml_call("bash", command="x"))[:-3])
    assert "DSML error" in broken["rendered"]
    sb.delete()


def test_reward_evaluate_and_cache(client):
    sb = client.create_sandbox(memory_mb=256)
    spec = {
        "files": {"/root/t/test_x.py":
                  "def test_a():\n    assert 1\n"
                  "def test_b():\n    assert 0\n"},
        "command": "cd /root/t && python3 -m pytest -rA -q -p no:cacheprovider",
        "parser": "pytest",
    }
    r = dsec.reward.evaluate(sb, spec)
    assert r["state"] == "scored" and r["usable"]
    assert r["reward"] == 0.5
    assert {t["name"].split("::")[-1]: t["verdict"] for t in r["tests"]} == \
        {"test_a": "passed", "test_b": "failed"}
    cache = dsec.reward.RewardCache(16)
    assert not cache.evaluate(sb, spec)["from_cache"]
    assert cache.evaluate(sb, spec)["from_cache"]
    with pytest.raises(ValueError):
        dsec.reward.evaluate(sb, {"command": "true", "parser": "nope"})
    sb.delete()


def test_verl_compute_score(client, local_cluster, monkeypatch):
    import verl_reward
    monkeypatch.setattr(verl_reward, "_client", client)
    tests = "from solution import add\n" \
            "def test_1():\n    assert add(1, 2) == 3\n" \
            "def test_2():\n    assert add(-1, 1) == 0\n"
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return abs(a) + b\n```"
    truth = {"pytest": tests}
    assert verl_reward.compute_score("t", good, truth)["score"] == 1.0
    assert verl_reward.compute_score("t", bad, truth)["score"] == 0.5
    cases = '{"cases": [{"stdin": "2 3\\n", "expected_stdout": "5\\n"},' \
            ' {"stdin": "10 -4\\n", "expected_stdout": "6\\n"}]}'
    prog = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    r = verl_reward.compute_score("t", prog, cases)
    assert r["score"] == 1.0 and r["usable"]
