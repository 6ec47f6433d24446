"""The process's /proc/self as a directory and as its view (kernel/syscalls/proc_files.py):
the musl workload `proc_view` lists /proc/self/fd and fdinfo, reads the links of its file and
pipe, fdinfo's position, checks smaps against maps and that mounts and mountinfo name "/" and
/proc — the same as natively, on both engines and while it migrates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover, start_in
from support.programs import native_in

from tender_ray.kernel.machine import Machine

MakeMachine = Callable[..., Machine]
# Moves as often as they can be made on the emulated engine (its process runs on at once);
# a native process frozen again within ~2 ms of each resume barely runs (thousands of moves,
# 30-45 s), so there a move every 3 ms: as many points of its run (tens) in a fraction of it.
BETWEEN_MOVES = {"emulated": 0.0, "native": 0.003}


def _native(tmp_path: Path) -> tuple[int, bytes, bytes]:
    where = tmp_path / "native"
    where.mkdir()
    return native_in("proc_view", where)


def _exec(machine: Machine, tmp_path: Path) -> int:
    where = tmp_path / "guest"
    where.mkdir()
    return start_in(machine, "proc_view", where)


@pytest.mark.parametrize("engine", ENGINES)
def test_as_natively(make_machine: MakeMachine, tmp_path: Path, engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, _exec(machine, tmp_path))
    assert (status, out, err) == _native(tmp_path), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_through_migrations(make_machine: MakeMachine, tmp_path: Path, engine: str) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(2)]
    pid = _exec(machines[0], tmp_path)
    where, _ = bounce(machines, pid, move=local_mover(), pause=BETWEEN_MOVES[engine])
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == _native(tmp_path), info.exit_reason
