"""`tender-ray exec` behaves as a shell runs a program, with a real Ray: Ctrl-C from a real
terminal (a pty) reaches the program, which dies of it (130, and the note) or catches it, and
a second Ctrl-C at once stops exec and everything it started; SIGTERM reaches the program's
handler; `| head` ends the program with SIGPIPE (141) and no traceback, and a program that
ignores SIGPIPE gets EPIPE, as natively; a bare name is found
on PATH and a `#!` script runs its interpreter, as natively; `--address auto` never joins
another Ray that happens to run on this host.

Each test waits for what it checks (a line the program prints, exec's exit), never for time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.processes import group_members
from support.programs import ROOT, run_native, workload
from support.terminal import Terminal as PtyTerminal
from support.terminal import assert_ctrl_c_kills

from tender_ray.cli import status

CLI_TIMEOUT = 240.0
EXEC = [sys.executable, "-m", "tender_ray", "exec"]


class Terminal(PtyTerminal):
    """`tender-ray exec ...` on a pty of its own, as from an interactive shell."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        super().__init__([*EXEC, *args], env, ROOT)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.kill()


def test_ctrl_c_on_a_terminal_kills_the_program(terminal: list[Terminal]) -> None:
    t = Terminal(os.fspath(workload("sigterm")), "wait")  # SIGINT's default action: it dies
    terminal.append(t)
    t.wait_for(b"ready\r\n")
    assert_ctrl_c_kills(t)


def test_ctrl_c_twice_stops_exec_and_what_it_started(terminal: list[Terminal]) -> None:
    t = Terminal(os.fspath(workload("ctrlc")), "handle")  # catches SIGINT and goes on
    terminal.append(t)
    t.wait_for(b"ready\r\n")
    t.type(b"\x03")
    t.wait_for(b"caught SIGINT\r\n")  # the first Ctrl-C is the program's
    t.type(b"\x03\x03")  # pressed twice at once: exec stops, and takes what it started along
    assert t.finish() == status.INTERRUPTED, t.seen
    text = t.seen.decode()
    assert re.search(r"\^Ctender-ray: interrupted twice: stopped process \d+ and what exec "
                     r"started\r\n", text), text
    assert "Traceback" not in text
    # Cleanly: the embedded Ray it started (its processes were in exec's process group) is
    # gone with it.
    end = time.monotonic() + 60
    while group_members(t.pid):
        assert time.monotonic() < end, group_members(t.pid)
        time.sleep(0.2)


def _native_sigterm_to_handler() -> tuple[int, bytes]:
    proc = subprocess.Popen([workload("ctrlc"), "handle"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    return proc.wait(60), b"ready\n" + out


def test_sigterm_reaches_the_program_handler() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([*EXEC, os.fspath(workload("ctrlc")), "handle"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first == b"ready\n", proc.stderr.read()  # the program runs, and waits
        proc.send_signal(signal.SIGTERM)  # to exec, as `kill PID` or a supervisor sends it
        out = b"ready\n" + proc.stdout.read()
        err = proc.stderr.read()
        assert (proc.wait(CLI_TIMEOUT), out) == _native_sigterm_to_handler(), err
        assert out == b"ready\ncaught SIGTERM\n" and err == b"", err
    finally:
        proc.kill()
        proc.wait()


def _closed_after_one_byte(command: list[str], **popen: Any) -> tuple[int, bytes]:
    """`COMMAND | head -c 1`: its status and its stderr."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, **popen)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1), proc.stderr.read()
        proc.stdout.close()  # what `head -c 1` does once it has its byte
        err = proc.stderr.read()
        return proc.wait(CLI_TIMEOUT), err
    finally:
        proc.kill()
        proc.wait()


def test_a_closed_pipe_ends_the_program_with_sigpipe() -> None:
    """`exec outflood closed default | head -c 1`: the reader goes after one byte; the
    program's next write raises SIGPIPE, as natively: 141, and nothing on stderr but what the
    program itself says there (its "ready", as natively). (A program that writes at once: one
    whose output a pipe buffers, as compute_sleep's, would make the test wait for its rounds.)"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    argv = [os.fspath(workload("outflood")), "closed", "default"]
    got = _closed_after_one_byte([*EXEC, *argv], cwd=ROOT, env=env)
    killed, err = _closed_after_one_byte(argv, env={})  # Popen's -N: killed by signal N
    assert (killed, err) == (-signal.SIGPIPE, b"outflood: ready\n")
    assert got == (status.SIGNAL_BASE + signal.SIGPIPE, err), got  # as a shell shows it


def test_a_program_ignoring_sigpipe_gets_epipe_as_natively() -> None:
    """`exec outflood closed ignore | head -c 1`: its write after the reader went fails with
    EPIPE, which it reports and ends with 0, as on the host; exec itself says nothing."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    argv = [os.fspath(workload("outflood")), "closed", "ignore"]
    got = _closed_after_one_byte([*EXEC, *argv], cwd=ROOT, env=env)
    native = _closed_after_one_byte(argv, env={})
    assert got == native, got
    assert native == (0, b"outflood: ready\noutflood: ignore: write -1 errno=32 (Broken pipe), "
                         b"SIGPIPE caught 0\n")


def test_a_name_on_path_and_a_script_run_as_natively(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "greet"
    # Its interpreter is one of our static programs: it prints the argv the kernel made.
    script.write_text(f"#!{workload('args')} --from-the-shebang-line\nnot run\n")
    script.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PATH": path,
           "TENDER_TEST": "from exec's environment"}
    r = subprocess.run([*EXEC, "greet", "one", "two words"], cwd=ROOT, env=env,
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT,
                       check=False)
    # Natively: the same script, found the same way (argv[1] is the path PATH gave).
    native = run_native(script, ["one", "two words"],
                        env={"TENDER_TEST": "from exec's environment"})
    assert (r.returncode, r.stdout, r.stderr) == native, r.stderr
    assert b"--from-the-shebang-line" in r.stdout and str(script).encode() in r.stdout


def test_auto_never_joins_another_ray_on_this_host(tmp_path: Path) -> None:
    """Another embedded Ray runs here (it rewrites Ray's own "current cluster" file): with
    no cluster of `up` and no RAY_ADDRESS, `--address auto` says so and joins nothing."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys, time\n"
         "ray.init(address='local', num_cpus=1, include_dashboard=False, "
         "object_store_memory=80 << 20, _node_ip_address='127.0.0.1')\n"
         "print('up', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == b"up\n"
        env = {**os.environ, "TENDER_STATE": os.fspath(tmp_path / "cluster.json")}
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run([*EXEC, "--address", "auto", os.fspath(workload("hello"))],
                           cwd=ROOT, env=env, capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=CLI_TIMEOUT, check=False)
        assert (r.returncode, r.stdout) == (status.EXEC_FAILED, b""), r.stderr
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("tender-ray: error: --address auto: no cluster of "
                                   "`tender-ray up`"), lines
        assert "RAY_ADDRESS is not set" in lines[0]
    finally:
        os.killpg(other.pid, signal.SIGTERM)  # the Ray this test started, by its group
        other.wait(60)
