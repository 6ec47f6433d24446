"""The process's own /proc (kernel/syscalls/proc_files.py): the musl workload `proc_self`
reads its maps, status, stat, cmdline, environ, limits, comm and the links exe, cwd and fd/N,
and prints what it found — the same as the binary natively, on both engines and while it
migrates (the files are made from the Tender process on whichever machine it is on)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover
from support.programs import NATIVE_TIMEOUT, workload

from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec

MakeMachine = Callable[..., Machine]
# Moves as often as they can be made on the emulated engine (its process runs on at once);
# a native process frozen again within ~2 ms of each resume barely runs (thousands of moves,
# 30-45 s), so there a move every 3 ms: as many points of its run (tens) in a fraction of it.
BETWEEN_MOVES = {"emulated": 0.0, "native": 0.003}
BUSYBOX = Path("/usr/bin/busybox")
ARGS = ["x", "y z"]
ENV = {"A": "1", "B": "two"}


def _native(cwd: str) -> tuple[int, bytes, bytes]:
    done = subprocess.run([str(workload("proc_self")), *ARGS], capture_output=True, env=ENV,
                          cwd=cwd, stdin=subprocess.DEVNULL, timeout=NATIVE_TIMEOUT,
                          check=False)
    return done.returncode, done.stdout, done.stderr


def _exec(machine: Machine, cwd: str) -> int:
    path = workload("proc_self")
    return machine.exec(path.read_bytes(), "proc_self", [str(path), *ARGS],
                        [f"{k}={v}" for k, v in ENV.items()],
                        files=FileViewSpec(cwd=cwd, writable=()))


@pytest.mark.parametrize("engine", ENGINES)
def test_proc_self_as_natively(make_machine: MakeMachine, tmp_path: Path,
                               engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, _exec(machine, str(tmp_path)))
    assert (status, out, err) == _native(str(tmp_path)), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_proc_self_through_migrations(make_machine: MakeMachine, tmp_path: Path,
                                      engine: str) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(2)]
    pid = _exec(machines[0], str(tmp_path))
    where, _ = bounce(machines, pid, move=local_mover(), pause=BETWEEN_MOVES[engine])
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == _native(str(tmp_path)), info.exit_reason


@pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")
def test_no_other_process_is_visible(make_machine: MakeMachine) -> None:
    machine = make_machine(quantum_us=1000, engine="emulated")
    pid = machine.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), "cat", "/proc/1/status"])
    status, out, err, _ = finish(machine, pid)
    assert (status, out) == (1, b"") and b"No such file or directory" in err
