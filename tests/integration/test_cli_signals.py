"""The command line's messages with a real Ray: a guest killed by a signal is named on stderr
(its output still byte-identical to native), `exec --machine` starts on the machine named and
refuses an unknown one in one line, and on a cluster of `up`, which says how to attach,
`kill` signals a process, a drain that cannot finish says what was left and why and exits 1,
and `down` under an attached exec makes it say the cluster was stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.programs import ROOT, run_native, workload

from tender_ray.cli import status

CLI_TIMEOUT = 240


def tender(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tender_ray", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT, cwd=ROOT, env=env,
                          check=False)


# SIGILL takes the same path to the same message (its own engine path is the machine's tests'
# test_sigill_kills_with_132): in the slow run only.
@pytest.mark.parametrize(("program", "signal", "code"), [
    ("segv", "SIGSEGV", 139), pytest.param("sigill", "SIGILL", 132, marks=pytest.mark.slow)])
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
    assert r.returncode == status.EXEC_FAILED and r.stdout == b""  # exec's own misuse
    err = r.stderr.decode().strip().splitlines()
    assert err == ["tender-ray: error: --machine m7: no such machine in the cluster; the "
                   "machines are m0, m1"]


def _ps_pid(env: dict[str, str], name: str) -> int | None:
    """The pid `tender-ray ps` shows for a process named `name`, if any."""
    for line in tender("ps", env={**env, "COLUMNS": "200"}).stdout.decode().splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) >= 2 and cells[0].isdigit() and cells[1] == name:
            return int(cells[0])
    return None


@pytest.mark.slow
def test_up_says_how_to_attach_and_a_stuck_drain_says_why(tmp_path: Path) -> None:
    """On a cluster of `up`: it says how to attach; `kill` signals a process (its handler
    takes it, the exec following it ends as the program does); a drain that cannot finish
    says why; `down` under an attached exec makes it say the cluster was stopped."""
    env = {**os.environ, "TENDER_STATE": str(tmp_path / "cluster.json")}
    env.pop("RAY_ADDRESS", None)
    up = tender("up", "--machines", "1", "--num-cpus", "2", "--no-metrics", env=env)
    runners: list[subprocess.Popen[bytes]] = []
    try:
        assert up.returncode == 0, up.stderr
        out = up.stdout.decode()
        address = json.loads((tmp_path / "cluster.json").read_text())["address"]
        assert f"--address {address}" in out and f"RAY_ADDRESS={address}" in out
        # `kill`: a program that catches SIGINT and SIGTERM, followed by an exec.
        waiter = subprocess.Popen([sys.executable, "-m", "tender_ray", "exec", "--address",
                                   "auto", os.fspath(workload("ctrlc")), "handle"], env=env,
                                  cwd=ROOT,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        runners.append(waiter)
        assert waiter.stdout is not None and waiter.stderr is not None
        assert waiter.stdout.readline() == b"ready\n"
        pid = _ps_pid(env, "ctrlc")
        assert pid is not None
        r = tender("kill", "--signal", "INT", str(pid), env=env)
        assert (r.returncode, r.stdout.decode()) == (
            0, f"kill: sent SIGINT to process {pid} on m0\n"), r.stderr
        assert waiter.stdout.readline() == b"caught SIGINT\n"
        r = tender("kill", str(pid), env=env)  # SIGTERM, as kill(1) sends by default
        assert r.returncode == 0 and b"sent SIGTERM" in r.stdout, r.stderr
        assert waiter.stdout.read() == b"caught SIGTERM\n"
        assert waiter.wait(CLI_TIMEOUT) == 0
        assert waiter.stderr.read().decode().splitlines() == [
            f"tender-ray: --address auto: joining the cluster `tender-ray up` started, at "
            f"{address} ({tmp_path / 'cluster.json'})"]
        r = tender("kill", str(pid), env=env)  # it has gone
        assert r.returncode == status.USAGE and f"no process {pid}" in r.stderr.decode()
        # A program that runs for minutes, on the only machine there is.
        runner = subprocess.Popen([sys.executable, "-m", "tender_ray", "exec", "--address",
                                   "auto", os.fspath(workload("compute_sleep")), "20000"],
                                  env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        runners.append(runner)
        assert runner.stdout is not None and runner.stderr is not None
        assert runner.stdout.readline().startswith(b"round 0: ")
        r = tender("drain", "m0", "--deadline", "1", env=env)
        assert r.returncode == status.FAILED, r.stdout + r.stderr
        line = r.stdout.decode().strip().splitlines()[-1]
        assert line.startswith("drain of m0: 0 moved in "), line
        assert "still there at the deadline (1 s): " in line and line.endswith(
            "(no other machine)"), line
        assert tender("undrain", "m0", env=env).returncode == 0
        # `down` under the exec still following its program
        down = tender("down", env=env)
        assert down.returncode == 0, down.stderr
        runner.stdout.read()
        assert runner.wait(CLI_TIMEOUT) == status.EXEC_FAILED
        last = runner.stderr.read().decode().splitlines()[-1]
        assert last.startswith("tender-ray: the cluster was stopped while process "), last
    finally:
        for p in runners:
            p.kill()
            p.wait(30)
        down = tender("down", env=env)
        assert down.returncode == 0, down.stderr
