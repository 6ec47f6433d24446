"""`tender-ray exec` as a shell, without a Ray cluster: finding the program (PATH, `#!`
scripts as execve runs them), its own statuses apart from the program's (125/126/127), the
signals it passes on or stops for, `--address auto` with nothing to join, `kill`'s signal
names, the line naming unsupported system calls, the notice of a slow step, and an output
whose reader went (told to the process where it is, as it migrates)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.machines import local_mover
from support.programs import GUEST_TIMEOUT, NATIVE_TIMEOUT, workload

from tender_ray.cli import status
from tender_ray.cli.exec_command import killed_message, unsupported_message
from tender_ray.cli.execute import (
    Interrupted,
    ProgramNotFoundError,
    SignalForwarder,
    resolve_program,
)
from tender_ray.cli.main import main
from tender_ray.cli.operate import parse_signal
from tender_ray.errors import (
    BadProgramError,
    MachineStoppedError,
    UnknownProcessError,
    UsageError,
)
from tender_ray.kernel.machine import Machine


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_bare_name_is_looked_up_on_path(tmp_path: Path) -> None:
    hello = workload("hello")
    found = resolve_program("hello", ["x"], path_env=f"{tmp_path}{os.pathsep}{hello.parent}")
    assert (found.path, found.name, found.argv) == (os.path.join(hello.parent, "hello"),
                                                    "hello", ("hello", "x"))
    assert found.image == hello.read_bytes()
    # a file that is there but not executable is skipped, as a shell skips it
    (tmp_path / "hello").write_text("not this one")
    assert resolve_program("hello", [], path_env=f"{tmp_path}:{hello.parent}").path == \
        os.path.join(hello.parent, "hello")


def test_no_such_program_says_what_to_try(tmp_path: Path) -> None:
    with pytest.raises(ProgramNotFoundError, match=r"sort: not found on PATH; give its path "
                                                   r"\(e\.g\. \./sort\)"):
        resolve_program("sort", [], path_env=str(tmp_path))
    with pytest.raises(ProgramNotFoundError, match="no such file"):
        resolve_program(os.fspath(tmp_path / "missing"), [])


def test_a_script_runs_its_interpreter_as_execve_does(tmp_path: Path) -> None:
    args = workload("args")
    inner = _script(tmp_path / "inner", f"#!{args} -x  y\n")
    found = resolve_program(os.fspath(inner), ["a", "b"])
    # interpreter, the rest of the #! line as one argument, the script as given, the args
    assert found.argv == (str(args), "-x  y", os.fspath(inner), "a", "b")
    assert (found.name, found.path, found.image) == ("inner", str(args), args.read_bytes())
    # a script whose interpreter is a script: one more level, as Linux allows
    outer = _script(tmp_path / "outer", f"#!{inner}\n")
    assert resolve_program(os.fspath(outer), ["a"]).argv == (
        str(args), "-x  y", os.fspath(inner), os.fspath(outer), "a")


def test_scripts_that_cannot_run(tmp_path: Path) -> None:
    bad = _script(tmp_path / "bad", "#!/no/such/interpreter\n")
    with pytest.raises(BadProgramError, match="bad interpreter: /no/such/interpreter does not "
                                              "exist") as exc:
        resolve_program(os.fspath(bad), [])
    assert not isinstance(exc.value, ProgramNotFoundError)  # found, cannot run: 126
    text = _script(tmp_path / "notes", "just text\n")
    with pytest.raises(BadProgramError, match=r"neither an ELF executable nor a #! script; "
                                              r".*tender-ray exec /bin/sh FILE"):
        resolve_program(os.fspath(text), [])
    empty = _script(tmp_path / "empty", "#!\n")
    with pytest.raises(BadProgramError, match="names no interpreter"):
        resolve_program(os.fspath(empty), [])
    loop = _script(tmp_path / "loop", f"#!{tmp_path / 'loop'}\n")
    with pytest.raises(BadProgramError, match="levels of #! interpreters"):
        resolve_program(os.fspath(loop), [])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("argv", "code", "says"), [
    (["exec", "no-such-program-here"], status.NOT_FOUND, "not found on PATH"),
    (["exec", "/no/such/file"], status.NOT_FOUND, "no such file"),
    (["exec", "README.md"], status.NOT_FOUND, "not found on PATH"),
    (["exec", "./README.md"], status.CANNOT_RUN, "neither an ELF executable nor a #! script"),
    (["exec", "--machines", "0", os.fspath(workload("hello"))], status.EXEC_FAILED,
     "--machines must be at least 1"),
    (["exec", "--migrate-every", "0", os.fspath(workload("hello"))], status.EXEC_FAILED,
     "--migrate-every must be a positive"),
])
def test_exec_statuses_are_apart_from_the_programs(argv: list[str], code: int, says: str,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from support.programs import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", "/nonexistent-dir")
    assert main(argv) == code
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("tender-ray: error: ") and says in line, line


def test_exec_misuse_is_125_not_2() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["exec", "--machines", "many", "x"])
    assert exit_.value.code == status.EXEC_FAILED
    with pytest.raises(SystemExit) as exit_:
        main(["ps", "--bogus"])
    assert exit_.value.code == status.USAGE  # other commands keep theirs


def test_statuses_of_exec_are_the_shells() -> None:
    assert (status.EXEC_FAILED, status.CANNOT_RUN, status.NOT_FOUND) == (125, 126, 127)


@pytest.mark.parametrize("with_env", [False, True])
def test_auto_with_nothing_to_join(with_env: bool, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TENDER_STATE", os.fspath(tmp_path / "cluster.json"))
    if with_env:  # RAY_ADDRESS=auto is no address either
        monkeypatch.setenv("RAY_ADDRESS", "auto")
        argv = ["exec", os.fspath(workload("hello"))]
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        argv = ["exec", "--address", "auto", os.fspath(workload("hello"))]
    assert main(argv) == status.EXEC_FAILED
    line = _one_line(capsys.readouterr().err)
    assert line == (f"tender-ray: error: --address auto: no cluster of `tender-ray up` "
                    f"({tmp_path / 'cluster.json'} does not exist) and RAY_ADDRESS is not "
                    "set: start one with `tender-ray up`, or give --address HOST:PORT")


def test_auto_means_the_cluster_of_up_and_says_so(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tender_ray.cli.operate import resolve_auto

    state = tmp_path / "cluster.json"
    monkeypatch.setenv("TENDER_STATE", os.fspath(state))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:7000")
    assert resolve_auto() == "127.0.0.1:7000"
    assert "joining RAY_ADDRESS=127.0.0.1:7000" in capsys.readouterr().err
    state.write_text('{"address": "127.0.0.1:6999", "machines": {"m0": 0}, '
                     '"shared_plate": "/tmp"}')
    assert resolve_auto() == "127.0.0.1:6999"  # the state file first
    assert f"the cluster `tender-ray up` started, at 127.0.0.1:6999 ({state})" in \
        capsys.readouterr().err


def test_signals_before_the_program_stop_exec_and_after_are_its() -> None:
    f = SignalForwarder()
    with pytest.raises(Interrupted) as exc:
        f._caught(signal.SIGTERM, None)
    assert (exc.value.signum, exc.value.twice) == (signal.SIGTERM, False)
    f._caught(signal.SIGWINCH, None)  # ignored by default: nothing to stop for
    assert not f.pending
    f.started = True
    for sig in (signal.SIGTERM, signal.SIGWINCH, signal.SIGUSR1, signal.SIGINT):
        f._caught(sig, None)
    assert list(f.pending) == [signal.SIGTERM, signal.SIGWINCH, signal.SIGUSR1, signal.SIGINT]
    with pytest.raises(Interrupted) as exc:  # Ctrl-C again at once
        f._caught(signal.SIGINT, None)
    assert exc.value.twice


def test_the_forwarder_installs_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    f = SignalForwarder()
    f.install()
    try:
        f.started = True
        os.kill(os.getpid(), signal.SIGUSR2)  # handled in this (main) thread, before kill returns
        end = time.monotonic() + 30
        while not f.pending:
            assert time.monotonic() < end
        assert list(f.pending) == [signal.SIGUSR2]
    finally:
        f.restore()
    assert signal.getsignal(signal.SIGUSR2) == before


@pytest.mark.parametrize(("text", "number"), [("9", 9), ("KILL", 9), ("sigterm", 15),
                                              ("SIGUSR1", 10), ("hup", 1), ("0", 0),
                                              ("40", 40)])
def test_kill_takes_signals_by_number_or_name(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["65", "NOPE", "-1", ""])
def test_kill_refuses_what_is_not_a_signal(text: str) -> None:
    with pytest.raises(UsageError, match=f"--signal {text}: not a signal; give a number"):
        parse_signal(text)


def test_kill_without_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TENDER_STATE", os.fspath(tmp_path / "cluster.json"))
    assert main(["kill", "--signal", "INT", "1001000"]) == status.USAGE
    assert "start one with `tender-ray up`" in _one_line(capsys.readouterr().err)
    assert main(["kill", "--signal", "BOGUS", "1001000"]) == status.USAGE
    assert "--signal BOGUS: not a signal" in _one_line(capsys.readouterr().err)


def test_the_unsupported_system_calls_line() -> None:
    assert unsupported_message({}) == ""
    assert unsupported_message({"socket": 1, "fork": 2, "clone (a thread)": 1}) == (
        "tender-ray: the program made system calls tender_ray does not support: fork: 2, "
        "clone (a thread): 1, socket: 1")


def test_no_note_for_sigpipe_as_shells_give_none() -> None:
    assert killed_message(7, 141, "killed by signal 13 (SIGPIPE)") == ""
    assert killed_message(7, 130, "killed by signal 2 (SIGINT)") == \
        "tender-ray: process 7 killed by SIGINT"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_slow_step_says_what_it_does() -> None:
    out = _Tty()
    with status.notice_if_slow("tender-ray: starting an embedded Ray ...", stream=out,
                               after=0.01):
        end = time.monotonic() + 30
        while not out.getvalue():  # the step goes on until the notice has come
            assert time.monotonic() < end
    assert out.getvalue() == "tender-ray: starting an embedded Ray ...\n"
    quiet = io.StringIO()  # not a terminal: exec's stderr is its program's, say nothing
    with status.notice_if_slow("x", stream=quiet, after=0.0):
        pass
    assert quiet.getvalue() == ""
    fast = _Tty()
    with status.notice_if_slow("x", stream=fast, after=60):
        pass  # done long before: nothing said, and the timer is gone
    assert fast.getvalue() == ""


class _Machine:
    """A machine handle as the exec loop asks it whether it still runs."""

    def __init__(self, name: str, state: str | None) -> None:
        self.name = name
        self.state = state  # None: its actor is gone

    def statistics(self, timeout: float | None = None) -> SimpleNamespace:
        if self.state is None:
            raise MachineStoppedError(f"machine {self.name} is gone: ActorDiedError")
        return SimpleNamespace(state=self.state)


@pytest.mark.parametrize(("states", "stopped"), [
    ((None,), True), (("stopped",), True), (("stopped", None), True),
    (("running",), False), ((None, "running"), False),
])
def test_a_process_on_no_machine_says_whether_the_cluster_was_stopped(
        states: tuple[str | None, ...], stopped: bool) -> None:
    from tender_ray.cli.execute import ClusterStoppedError, _vanished

    machines = {f"m{i}": _Machine(f"m{i}", s) for i, s in enumerate(states)}
    cluster = SimpleNamespace(machines=machines)
    why = _vanished(cluster, machines["m0"], 1001000)  # type: ignore[arg-type]
    assert isinstance(why, ClusterStoppedError) == stopped
    if stopped:
        assert str(why) == ("the cluster was stopped while process 1001000 ran: no machine of "
                            "it runs any more (`tender-ray down`, or its Ray went); its output "
                            "so far is above")
    else:
        assert str(why).startswith("process 1001000 vanished from machine m0")


def _native_closed(mode: str) -> tuple[int, bytes]:
    """`outflood closed MODE | head -c 1` on the host: its status and its stderr."""
    with subprocess.Popen([os.fspath(workload("outflood")), "closed", mode],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env={}) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=NATIVE_TIMEOUT)
    return (proc.returncode if proc.returncode >= 0 else 128 - proc.returncode), err


class _Migrating:
    """A machine (the kernel's, without Ray) whose process migrates to `destination` just as
    the exec loop tells it its output has closed: the first time it is frozen (the
    migration's start: refused, to be told again), the next time it has left."""

    def __init__(self, machine: Machine, destination: Machine) -> None:
        self.machine = machine
        self.destination = destination
        self.name = machine.name
        self.closes = 0
        self.deadline = time.monotonic() + GUEST_TIMEOUT  # a loop that never ends fails

    def __getattr__(self, name: str) -> object:
        return getattr(self.machine, name)

    def wait(self, pid: int, timeout: float | None = None) -> object:
        assert time.monotonic() < self.deadline, "the program never ended"
        return self.machine.wait(pid, timeout)

    def close_output(self, pid: int, fd: int) -> None:
        self.closes += 1
        if self.closes == 1:
            self.machine.freeze(pid)
        elif self.closes == 2:
            self.machine.thaw(pid)
            local_mover()(self.machine, pid, self.destination)
        self.machine.close_output(pid, fd)


@pytest.mark.parametrize("mode", ["ignore", "handle", "default"])
def test_a_closed_output_is_told_to_the_process_where_it_is(
        mode: str, make_machine: Callable[..., Machine]) -> None:
    """The reader of the program's stdout goes after one piece (as `| head -c 1`): the exec
    loop tells the process, again once it has migrated (refused while it moves, then found
    on the machine it went to); its next write raises SIGPIPE and fails with EPIPE, and it
    ends as natively (EPIPE reported when it ignores or catches SIGPIPE, 141 when not)."""
    from tender_ray.cli.execute import _follow

    a, b = make_machine(name="close-a"), make_machine(name="close-b")
    where = _Migrating(a, b)
    path = workload("outflood")
    pid = a.exec(path.read_bytes(), "outflood", [os.fspath(path), "closed", mode])
    got = {1: b"", 2: b""}

    def sink(fd: int, data: bytes) -> None:
        if fd == 1 and got[1]:
            raise BrokenPipeError  # the reader has its byte and has gone
        got[fd] += data

    def locate(wanted: int) -> Machine:
        for m in (a, b):
            if any(p.pid == wanted for p in m.list_processes()):
                return m
        raise UnknownProcessError(f"no process {wanted}")

    cluster = SimpleNamespace(machines={"close-a": where, "close-b": b}, locate=locate)
    result = _follow(cluster, where, pid, ["close-a", "close-b"],  # type: ignore[arg-type]
                     sink, 0.02, None, None, None, deque())
    # Refused while it migrated, then not found there: told on the machine it went to.
    assert where.closes == 2
    assert result.machine == "close-b"
    assert got[1]
    assert (result.exit_status, got[2]) == _native_closed(mode), got[2]


@pytest.mark.parametrize(("options", "with_files"), [
    ([], ["m0", "m1", "m2"]), (["--host-files", "home"], ["m0"]),
    (["--host-files", "home", "--machine", "m1"], ["m1"])])
def test_host_files_home_leaves_files_to_the_starting_machine(options: list[str],
                                                               with_files: list[str]) -> None:
    from tender_ray.cli.exec_command import _machine_configs
    from tender_ray.cli.main import build_parser
    from tender_ray.config import HostFiles

    ns = build_parser().parse_args(["exec", "--machines", "3", *options, "prog"])
    configs = _machine_configs(ns)
    assert [c.name for c in configs if c.host_files is HostFiles.NODE] == with_files
    assert all(c.host_files is HostFiles.NONE for c in configs if c.name not in with_files)
    with pytest.raises(SystemExit) as exit_:
        main(["exec", "--host-files", "nowhere", "prog"])
    assert exit_.value.code == status.EXEC_FAILED
