"""Process trees on one machine: fork makes a Tender process of its own (its own pid, listed,
killed on its own), wait4/waitid collect exit statuses and deaths by signal, SIGCHLD reaches
a handler, pipes carry data between processes, and a child's output goes where its tree's
root's goes. Debian's shell pipelines and Python's subprocess print what they print natively.
A process of a tree asked to move to another machine alone is refused by name and runs on."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.balancing import LocalClient
from support.engines import ENGINES, NATIVE_OK, NATIVE_WHY
from support.machines import finish, frames_free, local_mover, start, wait_until
from support.programs import NATIVE_TIMEOUT, native, need

from tender_ray.balancing.loop import BalancingLoop
from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.errors import ProcessTreeError
from tender_ray.kernel.machine import Machine
from tender_ray.migration.options import MigrationOptions
from tender_ray.resources.file_view import FileViewSpec

MakeMachine = Callable[..., Machine]
ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
SH = "/bin/sh"


@pytest.mark.parametrize("engine", ENGINES)
def test_fork_wait_pipes_and_sigchld_as_natively(make_machine: MakeMachine,
                                                 engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    expected = native("forkwait", "8")
    assert expected[0] == 0 and b"pipe: 524288 bytes" in expected[1], expected
    status, out, err, info = finish(machine, start(machine, "forkwait", "8"))
    assert (status, out, err) == expected, info.exit_reason
    # Every child was waited for: none is left in the table, nothing stays allocated.
    assert machine.list_processes() == []
    assert frames_free(machine)


def _exec(machine: Machine, argv: tuple[str, ...], where: Path, tmp: Path | None = None) -> int:
    return machine.exec(Path(argv[0]).read_bytes(), Path(argv[0]).name, list(argv),
                        [f"{k}={v}" for k, v in ENV.items()],
                        files=FileViewSpec(cwd=os.fspath(where), writable=(),
                                           tmp=os.fspath(tmp) if tmp else None),
                        stdin="/dev/null")


def _start_sleeper(machine: Machine, where: Path) -> tuple[int, int]:
    """`sh -c 'sleep 60; echo $?'`: the shell's pid and its child's, once the child runs."""
    need(SH, "/bin/sleep")
    pid = _exec(machine, (SH, "-c", "sleep 60; echo $?"), where)
    wait_until(lambda: any(i.name == "sleep" for i in machine.list_processes()),
               what="the shell's child to exec sleep")
    child = next(i.pid for i in machine.list_processes() if i.name == "sleep")
    return pid, child


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
def test_a_child_is_a_process_of_its_own(make_machine: MakeMachine, tmp_path: Path) -> None:
    machine = make_machine(quantum_us=1000, engine="native")
    pid, child = _start_sleeper(machine, tmp_path)
    listed = {i.pid: i for i in machine.list_processes()}
    assert child != pid and listed[pid].name == "sh" and listed[child].state != "zombie"
    machine.kill(child, signal.SIGTERM)  # the shell sees its child killed by SIGTERM
    status, out, err, info = finish(machine, pid)
    assert (status, out, err) == (0, b"143\n", b"Terminated\n"), info.exit_reason  # as dash says
    assert frames_free(machine)


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
def test_a_process_of_a_tree_is_refused_a_move_by_name(make_machine: MakeMachine,
                                                       tmp_path: Path) -> None:
    here = make_machine(name="m0", quantum_us=1000, engine="native")
    there = make_machine(name="m1", quantum_us=1000, engine="native")
    pid, child = _start_sleeper(here, tmp_path)
    move = local_mover()
    for who, why in ((child, "its parent"), (pid, "not yet waited for")):
        with pytest.raises(ProcessTreeError, match=why) as refused:
            move(here, who, there)
        assert f"process {who} is part of a process tree" in str(refused.value)
    assert there.list_processes() == []
    assert {i.pid for i in here.list_processes()} == {pid, child}  # both run on, here
    here.kill(child, signal.SIGTERM)
    status, out, _, info = finish(here, pid)
    assert (status, out) == (0, b"143\n"), info.exit_reason


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
def test_a_drain_of_a_tree_is_refused_by_name_and_the_balancer_goes_on(
        make_machine: MakeMachine, tmp_path: Path) -> None:
    world = {name: make_machine(name=name, quantum_us=1000, engine="native")
             for name in ("m0", "m1")}
    pid, child = _start_sleeper(world["m0"], tmp_path)
    loop = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 1.0)
    for machine in world.values():
        loop.add_machine(LocalClient(machine, world))
    world["m0"].cordon()  # drain it: every round plans to move both processes off it
    for rounds in (1, 2):
        loop.round()
        state = loop.state()
        assert state.rounds == rounds and state.migrations == ()
        assert len(state.failures) == 2 * rounds
        assert all("part of a process tree" in f for f in state.failures), state.failures
    assert world["m1"].list_processes() == []
    world["m0"].uncordon()
    world["m0"].kill(child, signal.SIGTERM)
    status, out, _, info = finish(world["m0"], pid)
    assert (status, out) == (0, b"143\n"), info.exit_reason


SORT_INPUT = b"".join(b"%05d %s\n" % (i * 7919 % 3001, b"xyz"[i % 3:]) for i in range(60_000))
PYTHON = r"""
import subprocess, sys
done = subprocess.run(["/usr/bin/printf", "%s-", "a", "b"], capture_output=True)
print(done.returncode, done.stdout)
try:
    subprocess.run(["./missing"])
except OSError as e:
    print("error", e.errno, e.strerror)
print(subprocess.run("echo $((6 * 7)) | tr 4 x", shell=True, capture_output=True,
                     text=True).stdout, end="")
print(subprocess.run([sys.executable, "-c", "import os; print(os.getppid() > 1)"],
                     capture_output=True, text=True).stdout, end="")
import os
pid = os.posix_spawn("/usr/bin/true", ["true"], {})
print("posix_spawn", os.waitpid(pid, 0)[1])
try:
    os.posix_spawn("./missing", ["missing"], {})
except OSError as e:
    print("posix_spawn error", e.errno)
"""
CASES: dict[str, tuple[str, ...]] = {
    "pipeline": (SH, "-c", "cut -c1-5 input.txt | sort | uniq -c"),
    "dash-cat": ("/usr/bin/dash", "-c", "cat input.txt"),
    "sh-errors": (SH, "-c", "nosuch; echo $?; ./input.txt; echo $?; false || echo no"),
    "python-subprocess": ("/usr/bin/python3", "-c", PYTHON),
}


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
@pytest.mark.parametrize("name", list(CASES))
def test_debian_programs_that_fork(make_machine: MakeMachine, tmp_path: Path,
                                   name: str) -> None:
    argv = CASES[name]
    need(argv[0], "/usr/bin/sort", "/usr/bin/cut")
    where, tmp = tmp_path / "work", tmp_path / "tmp"
    where.mkdir()
    tmp.mkdir()
    (where / "input.txt").write_bytes(SORT_INPUT)
    expected = subprocess.run(argv, capture_output=True, env=ENV, cwd=where, check=False,
                              stdin=subprocess.DEVNULL, timeout=NATIVE_TIMEOUT)
    assert expected.stdout, expected.stderr
    machine = make_machine(quantum_us=1000, engine="native", memory_mib=512)
    status, out, err, info = finish(machine, _exec(machine, argv, where, tmp))
    assert (status, out) == (expected.returncode, expected.stdout), (info.exit_reason, err)
    assert err == expected.stderr
    assert machine.list_processes() == []
