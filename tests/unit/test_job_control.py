"""Signals between the processes of a tree and job control on one machine: kill of a child
by pid, of a process group by -pgid, killpg and kill(0), with Linux's ESRCH and EINVAL
answers; a child stopped by SIGSTOP/SIGTSTP does not run until SIGCONT, and waitpid
(WUNTRACED|WCONTINUED) and waitid (WSTOPPED, WCONTINUED) report it as Linux encodes it, with
SIGCHLD on a stop unless SA_NOCLDSTOP. Debian's shell and coreutils' timeout, which fork,
kill and wait, end with the status and output they have natively."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES, NATIVE_OK, NATIVE_WHY
from support.machines import finish, finish_standby, frames_free, local_mover, start, start_standby
from support.programs import NATIVE_TIMEOUT, native, native_standby, need

from tender_ray.errors import ProcessTreeError
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec

MakeMachine = Callable[..., Machine]
ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize("engine", ENGINES)
def test_kill_groups_stop_and_continue_as_natively(make_machine: MakeMachine,
                                                   engine: str) -> None:
    expected = native("jobctl")
    assert expected[0] == 0 and b"stop: stopped by 19" in expected[1], expected
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, start(machine, "jobctl"))
    assert (status, out, err) == expected, info.exit_reason
    assert machine.list_processes() == []
    assert frames_free(machine)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stopped_process_is_refused_a_move_and_moves_once_continued(
        make_machine: MakeMachine, engine: str) -> None:
    here = make_machine(name="m0", quantum_us=1000, engine=engine)
    there = make_machine(name="m1", quantum_us=1000, engine=engine)
    pid, taken = start_standby(here)
    here.kill(pid, signal.SIGSTOP)
    move = local_mover()
    with pytest.raises(ProcessTreeError, match=f"process {pid} is stopped .*SIGCONT"):
        move(here, pid, there)
    assert [i.pid for i in here.list_processes()] == [pid] and there.list_processes() == []
    here.kill(pid, signal.SIGCONT)
    move(here, pid, there)
    status, out, err, info = finish_standby(there, pid, taken)
    assert (status, out, err) == native_standby(), info.exit_reason


CASES = {
    "sh-kill-wait": ("/bin/sh", "-c", "sleep 30 & kill $!; wait $!; echo $?"),
    "sh-stop-cont": ("/bin/sh", "-c", "sleep 1 & kill -STOP $!; kill -CONT $!; wait $!; "
                     "echo $?"),
    "timeout": ("/usr/bin/timeout", "5", "/bin/sleep", "30"),
}


def _exec(machine: Machine, argv: tuple[str, ...], where: Path) -> int:
    return machine.exec(Path(argv[0]).read_bytes(), Path(argv[0]).name, list(argv),
                        [f"{k}={v}" for k, v in ENV.items()],
                        files=FileViewSpec(cwd=os.fspath(where), writable=()),
                        stdin="/dev/null")


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
@pytest.mark.parametrize("name", list(CASES))
def test_debian_programs_that_kill_their_children(make_machine: MakeMachine, tmp_path: Path,
                                                  name: str) -> None:
    argv = CASES[name]
    need(argv[0], "/bin/sleep")
    expected = subprocess.run(argv, capture_output=True, env=ENV, cwd=tmp_path, check=False,
                              stdin=subprocess.DEVNULL, timeout=NATIVE_TIMEOUT)
    machine = make_machine(quantum_us=1000, engine="native")
    status, out, err, info = finish(machine, _exec(machine, argv, tmp_path))
    assert (status, out, err) == (expected.returncode, expected.stdout, expected.stderr), \
        info.exit_reason
    assert machine.list_processes() == []


@pytest.mark.parametrize("engine", ENGINES)
def test_a_signal_to_one_thread_is_taken_by_that_thread(make_machine: MakeMachine,
                                                        engine: str) -> None:
    expected = native("threadkill")
    assert expected[0] == 0 and b"handler ran in this thread" in expected[1], expected
    machine = make_machine(quantum_us=1000, engine=engine, computations=2)
    status, out, err, info = finish(machine, start(machine, "threadkill"))
    assert (status, out, err) == expected, info.exit_reason
