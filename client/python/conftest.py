"""Fixtures for the dsec Python module: a local cluster (`dsecctl local up`)
started once per session, and a fresh job client per test."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest


def _need_host():
    ok = os.geteuid() == 0 and os.path.isdir("/sys/fs/cgroup")
    if not ok:
        if os.environ.get("CI") in ("true", "1"):
            pytest.fail("root with cgroups is required under CI", pytrace=False)
        pytest.skip("needs root with cgroups")


@pytest.fixture(scope="session")
def local_cluster():
    _need_host()
    bin_dir = os.environ.get("DSEC_BIN_DIR", "build/bin")
    data = tempfile.mkdtemp(prefix="dsec-py-")
    log_path = os.path.join(data, "up.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "dsecctl"), "local", "up", "--port", "0",
         "--data_dir", os.path.join(data, "state")],
        stdout=log, stderr=subprocess.STDOUT)
    address = None
    deadline = time.time() + 60
    while time.time() < deadline and address is None:
        with open(log_path) as f:
            m = re.search(r"controller (127\.0\.0\.1:[0-9]+)", f.read())
        if m:
            address = m.group(1)
            break
        assert proc.poll() is None, open(log_path).read()
        time.sleep(0.05)
    assert address, open(log_path).read()
    yield address
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def client(local_cluster):
    import dsec
    job_id, key = dsec.create_job(local_cluster, "py-" + uuid.uuid4().hex[:8])
    return dsec.Client(local_cluster, api_key=key)
