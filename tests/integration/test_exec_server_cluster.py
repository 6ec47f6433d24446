"""`tender-ray exec` on the cluster of `tender-ray up` through its exec server's warm driver,
with a real Ray: the program's output and status as natively, the next exec through the next
warm driver, its standard input the client's, Ctrl-C and SIGTERM passed on to the program,
Ctrl-C typed on a real terminal (a pty) killing the program (130, and the note) and, typed
twice, stopping exec and its program on the cluster, `| head` ending it with SIGPIPE (141), a
stale socket falling back to exec's usual path with one line, and `down` ending the server.
Which path an exec took is read from the server's log (one "took a client" line per exec it served).

Each test waits for what it checks (a line the program prints, exec's exit), never for time.
The module's `up` (state under tmp) is brought down at the end, and only the Ray head and
server it started are ended, by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import alive, group_members
from support.programs import ROOT, run_native, workload
from support.terminal import Terminal, assert_ctrl_c_kills

from tender_ray.cli import status
from tender_ray.cli.exec_server import _is_server, stop_server
from tender_ray.cli.operate import stop_head

pytestmark = pytest.mark.slow

CLI_TIMEOUT = 300.0
TAKEN = "took a client"
CAUGHT = b"caught SIGINT\r\n"
STOPPED = b"interrupted twice"


class Up:
    def __init__(self, env: dict[str, str], state: Path) -> None:
        self.env = env
        self.state = state
        self.log = state.with_name("cluster.exec.log")

    def data(self) -> dict[str, object]:
        return dict(json.loads(self.state.read_text()))

    def served(self) -> int:
        """Execs the server has handed to a warm driver so far."""
        return self.log.read_text().count(TAKEN) if self.log.exists() else 0

    def joining(self) -> str:
        return (f"tender-ray: --address auto: joining the cluster `tender-ray up` started, at "
                f"{self.data()['address']} ({self.state})")


def tender(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tender_ray", *args], env=env, cwd=ROOT,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT,
                          check=False)


def exec_popen(up: Up, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tender_ray", "exec", "--address", "auto",
                             *args], env=up.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state = tmp_path_factory.mktemp("exec-server") / "cluster.json"
    env = {**os.environ, "TENDER_STATE": str(state), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("TENDER_EXEC_SERVER", None)
    head_pid: int | None = None
    server_pid: int | None = None
    socket_file: str | None = None
    try:
        r = tender(env, "up", "--machines", "1", "--num-cpus", "2", "--no-metrics")
        assert r.returncode == 0, r.stdout + r.stderr
        data = json.loads(state.read_text())
        head_pid, server_pid, socket_file = (data["head_pid"], data["exec_server_pid"],
                                             data["exec_socket"])
        assert f"exec server: pid {server_pid} on {socket_file}" in r.stdout.decode()
        yield Up(env, state)
    finally:
        if state.exists():
            tender(env, "down")
        if server_pid is not None and _is_server(server_pid, socket_file):
            stop_server(server_pid, socket_file)  # only the server this module's `up` started
        if head_pid is not None and group_members(head_pid):
            stop_head(head_pid)


def test_output_and_status_as_natively_and_the_next_exec_too(up: Up) -> None:
    for args in (("exitcode", "7"), ("hello",)):  # the second: the next warm driver
        before = up.served()
        r = tender(up.env, "exec", "--address", "auto", os.fspath(workload(args[0])), *args[1:])
        native_status, out, err = run_native(workload(args[0]), args[1:])
        assert (r.returncode, r.stdout, r.stderr.decode().splitlines()) == (
            native_status, out, [up.joining(), *err.decode().splitlines()])
        assert up.served() == before + 1  # it went through the server's warm driver


def test_standard_input_is_the_clients(up: Up) -> None:
    """A pipe into exec is the program's standard input, read to its end, as natively."""
    data = b"through the warm driver\n" * 5000
    before = up.served()
    r = subprocess.run([sys.executable, "-m", "tender_ray", "exec", "--address", "auto",
                        os.fspath(workload("stdin_eof"))], env=up.env, cwd=ROOT, input=data,
                       capture_output=True, timeout=CLI_TIMEOUT, check=False)
    native = subprocess.run([workload("stdin_eof")], input=data, capture_output=True,
                            timeout=CLI_TIMEOUT, check=False)
    assert (r.returncode, r.stdout) == (native.returncode, native.stdout), r.stderr
    assert up.served() == before + 1


def test_signals_are_passed_on_to_the_program(up: Up) -> None:
    """SIGINT to exec reaches the program's handler; SIGTERM its other one, which ends it 0."""
    before = up.served()
    proc = exec_popen(up, os.fspath(workload("ctrlc")), "handle")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == b"caught SIGINT\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.read() == b"caught SIGTERM\n"
        assert proc.wait(CLI_TIMEOUT) == 0
        assert proc.stderr.read().decode().splitlines() == [up.joining()]
    finally:
        proc.kill()
        proc.wait()
    assert up.served() == before + 1


def test_ctrl_c_kills_a_program_that_does_not_catch_it(up: Up) -> None:
    proc = exec_popen(up, os.fspath(workload("sigterm")), "wait")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(CLI_TIMEOUT) == status.SIGNAL_BASE + signal.SIGINT
        err = proc.stderr.read().decode().splitlines()
        assert err[0] == up.joining() and len(err) == 2, err
        assert err[1].startswith("tender-ray: process ") and " killed by SIGINT" in err[1], err
    finally:
        proc.kill()
        proc.wait()


def _on_a_terminal(up: Up, *args: str) -> Terminal:
    """`tender-ray exec --address auto ...` typed at an interactive shell: ^C typed on its
    terminal is SIGINT to the client's process group, which the client passes on."""
    return Terminal([sys.executable, "-m", "tender_ray", "exec", "--address", "auto", *args],
                    up.env, ROOT)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.kill()


def test_ctrl_c_on_a_terminal_kills_the_program(up: Up, terminals: list[Terminal]) -> None:
    before = up.served()
    t = _on_a_terminal(up, os.fspath(workload("sigterm")), "wait")  # SIGINT's default: death
    terminals.append(t)
    t.wait_for(b"ready\r\n")
    assert_ctrl_c_kills(t)
    assert up.served() == before + 1  # the warm driver ran it


def test_ctrl_c_twice_on_a_terminal_stops_exec_and_its_program(
        up: Up, terminals: list[Terminal]) -> None:
    before = up.served()
    t = _on_a_terminal(up, os.fspath(workload("ctrlc")), "handle")  # catches SIGINT, goes on
    terminals.append(t)
    t.wait_for(b"ready\r\n")
    t.type(b"\x03")
    t.wait_for(b"caught SIGINT\r\n")  # the first Ctrl-C is the program's
    # Pressed again at once: the second within exec's 2 s stops exec, and its program with
    # it. (On a host so busy that more than 2 s went by, the program catches it too, and it
    # is pressed again as soon as that shows.)
    while STOPPED not in t.seen:
        caught = t.seen.count(CAUGHT)

        def answered(seen: bytes, caught: int = caught) -> bool:
            return STOPPED in seen or seen.count(CAUGHT) > caught

        t.type(b"\x03")
        t.wait_until(answered, "the program's or exec's answer to Ctrl-C")
    assert t.finish() == status.INTERRUPTED, t.seen
    text = t.seen.decode()
    stopped = re.search(r"\^Ctender-ray: interrupted twice: stopped process (\d+) and what "
                        r"exec started\r\n", text)
    assert stopped, text
    assert "Traceback" not in text
    assert up.served() == before + 1
    # Cleanly: the program is gone from the cluster, and the next exec is served as usual.
    listed = tender(up.env, "ps")
    assert listed.returncode == 0, listed.stderr
    assert stopped[1] not in listed.stdout.decode().split(), listed.stdout
    r = tender(up.env, "exec", "--address", "auto", os.fspath(workload("hello")))
    assert (r.returncode, r.stdout) == run_native(workload("hello"))[:2], r.stderr
    assert up.served() == before + 2


def test_a_closed_pipe_ends_the_program_with_sigpipe(up: Up) -> None:
    """`exec compute_sleep 20000 | head -3` through the warm driver: 141, as natively."""
    before = up.served()
    proc = exec_popen(up, os.fspath(workload("compute_sleep")), "20000")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(line.startswith(b"round ") for line in lines), lines
        proc.stdout.close()  # what `head -3` does once it has its lines
        err = proc.stderr.read()
        assert proc.wait(CLI_TIMEOUT) == status.SIGNAL_BASE + signal.SIGPIPE, err
        assert err.decode().splitlines() == [up.joining()]
    finally:
        proc.kill()
        proc.wait()
    assert up.served() == before + 1


def test_a_stale_socket_falls_back_with_one_line(up: Up, tmp_path: Path) -> None:
    """A state naming a socket nobody listens on: one line says so, exec runs the usual way."""
    stale = tmp_path / "cluster.json"
    stale.write_text(json.dumps({**up.data(), "exec_socket": str(tmp_path / "gone.sock")}))
    env = {**up.env, "TENDER_STATE": str(stale)}
    before = up.served()
    r = tender(env, "exec", "--address", "auto", os.fspath(workload("hello")))
    native_status, out, err = run_native(workload("hello"))
    assert (r.returncode, r.stdout) == (native_status, out), r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines[0] == (f"tender-ray: notice: the exec server at {tmp_path / 'gone.sock'} does "
                        "not answer (No such file or directory); starting exec the usual way")
    assert lines[1:] == [f"tender-ray: --address auto: joining the cluster `tender-ray up` "
                         f"started, at {up.data()['address']} ({stale})",
                         *err.decode().splitlines()]
    assert up.served() == before


def test_down_ends_the_server(up: Up) -> None:
    data = up.data()
    server_pid, socket_file = data["exec_server_pid"], data["exec_socket"]
    assert isinstance(server_pid, int) and isinstance(socket_file, str)
    assert alive(server_pid) and Path(socket_file).exists()
    r = tender(up.env, "down")
    assert r.returncode == 0, r.stderr
    assert not _is_server(server_pid, socket_file)
    assert not Path(socket_file).exists()
