"""The command line's messages with a real Ray: a guest killed by a signal is named on stderr
(its output still byte-identical to native), `exec --machine` starts on the machine named and
refuses an unknown one in one line, and on a cluster of `up`, which says how to attach, a
drain that cannot finish says what was left and why and exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.programs import ROOT, run_native, workload

from tender_ray.cli import status

CLI_TIMEOUT = 240


def tender(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tender_ray", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT, cwd=ROOT, env=env,
                          check=False)


@pytest.mark.parametrize(("program", "signal", "code"), [("segv", "SIGSEGV", 139),
                                                         ("sigill", "SIGILL", 132)])
def test_a_guest_killed_by_a_signal_is_named(tmp_path: Path, program: str, signal: str,
                                             code: int) -> None:
    stats = tmp_path / "stats.json"
    r = tender("exec", "--stats", os.fspath(stats), os.fspath(workload(program)))
    native_status, native_out, native_err = run_native(workload(program))
    pid = json.loads(stats.read_text())["pid"]
    assert (r.returncode, native_status) == (code, code)
    assert r.stdout == native_out
    lines = r.stderr.decode().splitlines()
    assert lines[-1].startswith(f"tender-ray: process {pid} killed by {signal} ("), lines
    assert r.stderr.removesuffix(lines[-1].encode() + b"\n") == native_err


def test_exec_on_a_named_machine_and_an_unknown_one(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    r = tender("exec", "--machines", "2", "--machine", "m1", "--stats", os.fspath(stats),
               os.fspath(workload("hello")))
    assert (r.returncode, r.stdout, r.stderr) == run_native(workload("hello"))
    assert json.loads(stats.read_text())["final_machine"] == "m1"
    r = tender("exec", "--machines", "2", "--machine", "m7", os.fspath(workload("hello")))
    assert r.returncode == status.USAGE and r.stdout == b""
    err = r.stderr.decode().strip().splitlines()
    assert err == ["tender-ray: error: --machine m7: no such machine in the cluster; the "
                   "machines are m0, m1"]


@pytest.mark.slow
def test_up_says_how_to_attach_and_a_stuck_drain_says_why(tmp_path: Path) -> None:
    env = {**os.environ, "TENDER_STATE": str(tmp_path / "cluster.json")}
    env.pop("RAY_ADDRESS", None)
    up = tender("up", "--machines", "1", "--num-cpus", "2", "--no-metrics", env=env)
    runner: subprocess.Popen[bytes] | None = None
    try:
        assert up.returncode == 0, up.stderr
        out = up.stdout.decode()
        address = json.loads((tmp_path / "cluster.json").read_text())["address"]
        assert f"--address {address}" in out and f"RAY_ADDRESS={address}" in out
        # A program that runs for minutes, on the only machine there is.
        runner = subprocess.Popen([sys.executable, "-m", "tender_ray", "exec", "--address",
                                   "auto", os.fspath(workload("compute_sleep")), "20000"],
                                  env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while b"compute_sleep" not in tender("ps", env=env).stdout:
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(1)
        r = tender("drain", "m0", "--deadline", "1", env=env)
        assert r.returncode == status.FAILED, r.stdout + r.stderr
        line = r.stdout.decode().strip().splitlines()[-1]
        assert line.startswith("drain of m0: 0 moved in "), line
        assert "still there at the deadline (1 s): " in line and line.endswith(
            "(no other machine)"), line
        assert tender("undrain", "m0", env=env).returncode == 0
    finally:
        if runner is not None:
            runner.kill()
            runner.wait(30)
        down = tender("down", env=env)
        assert down.returncode == 0, down.stderr
