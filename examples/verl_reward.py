"""A verl / OpenRLHF custom reward function backed by dsec.

Point verl at it with

    custom_reward_function.path=examples/verl_reward.py
    custom_reward_function.name=compute_score

and set DSEC_CONTROLLER (host:port) and DSEC_API_KEY (the job's key) in the
trainer's environment. Each call extracts the candidate program from the
model's answer, runs the task's tests against it in a fresh dsec sandbox and
returns {"score": reward in [0, 1], ...}.

ground_truth (a JSON string or a dict) is one of
    {"pytest": "<test file text>", "module": "solution.py"}
        the candidate is written to `module`, the tests to test_solution.py,
        scored as the fraction of pytest tests passed;
    {"cases": [{"stdin": "...", "expected_stdout": "..."}, ...]}
        the candidate runs once per case in the same sandbox, stdout
        compared ignoring trailing whitespace.

Infrastructure failures (node lost, controller unreachable) are not the
model's fault: the result then has "usable": False and score 0.0; mask
such samples instead of training on them.
"""
import json
import os
import re

import dsec

_client = None
_cache = dsec.reward.RewardCache(8192)

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def _get_client():
    global _client
    if _client is None:
        _client = dsec.Client(os.environ.get("DSEC_CONTROLLER", "127.0.0.1:7070"),
                              api_key=os.environ.get("DSEC_API_KEY", ""))
    return _client


def extract_code(solution_str):
    """The last fenced code block of the answer, else the whole answer."""
    blocks = _FENCE.findall(solution_str)
    return blocks[-1] if blocks else solution_str


def _spec(code, truth):
    if "pytest" in truth:
        module = truth.get("module", "solution.py")
        return {
            "files": {"/root/task/" + module: code,
                      "/root/task/test_solution.py": truth["pytest"]},
            "command": "cd /root/task && python3 -m pytest -rA -q "
                       "-p no:cacheprovider test_solution.py",
            "parser": "pytest",
            "timeout": truth.get("timeout", 60),
        }
    if "cases" in truth:
        return {
            "files": {"/root/task/main.py": code},
            "command": "python3 /root/task/main.py",
            "cases": [{"name": f"case_{i}", "stdin": c.get("stdin", ""),
                       "expected_stdout": c["expected_stdout"]}
                      for i, c in enumerate(truth["cases"])],
            "timeout": truth.get("timeout", 10),
        }
    raise ValueError("ground_truth needs \"pytest\" or \"cases\"")


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    truth = json.loads(ground_truth) if isinstance(ground_truth, str) \
        else ground_truth
    spec = _spec(extract_code(solution_str), truth)
    try:
        sandbox = _get_client().create_sandbox(memory_mb=512, pids=128)
    except dsec.InfraError as e:
        return {"score": 0.0, "usable": False, "state": "infra_failed",
                "reason": str(e)}
    try:
        result = _cache.evaluate(sandbox, spec)
    finally:
        try:
            sandbox.delete()
        except dsec.InfraError:
            pass
    return {"score": float(result["reward"]), "usable": result["usable"],
            "state": result["state"], "reason": result["reason"],
            "passed": result["counts"]["passed"],
            "failed": result["counts"]["failed"] + result["counts"]["errors"]}
