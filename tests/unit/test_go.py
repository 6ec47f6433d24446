"""A Go program nobody here wrote: Debian's `gojq` (a static Go binary: its own runtime, no
libc) runs as natively on both engines and, on the emulated one, moves over three machines
while its runtime's threads (sysmon, the garbage collector's workers, idle Ms parked in
futexes) run, its output identical to the native run's."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.leases import MakeMachine
from support.machines import ThreadedMoves, assert_clean, bounce, finish
from support.programs import need, run_native

from tender_ray.kernel.machine import Machine

GOJQ = "/usr/bin/gojq"
# Keep the ids the filter picks, sum them, and count each record's string lengths: enough
# work (and garbage) for the collector to run while it moves.
FILTER = "[.[] | select(.v > 50) | .id] | add, ([.[] | .s | length] | add)"
ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """JSON arrays of records from a fixed seed, in growing sizes: larger when a run ended
    before it was moved with its threads."""
    rng = random.Random(23)
    made = []
    for count in (4_000, 16_000):
        path = tmp_path_factory.mktemp("gojq") / f"records{count}.json"
        path.write_text(json.dumps([{"id": i, "v": rng.randrange(97),
                                     "s": "x" * rng.randrange(13)} for i in range(count)]))
        made.append(path)
    return made


def _launch(machine: Machine, path: Path) -> int:
    return machine.exec(Path(GOJQ).read_bytes(), "gojq", [GOJQ, FILTER, os.fspath(path)],
                        [f"{k}={v}" for k, v in ENV.items()])


@pytest.mark.parametrize("engine", [
    "emulated", pytest.param("native", marks=pytest.mark.skipif(not NATIVE_OK,
                                                                  reason=NATIVE_WHY))])
def test_gojq_runs_as_natively(make_machine: MakeMachine, records: list[Path],
                               engine: str) -> None:
    need(GOJQ)
    machine = make_machine(name="go", engine=engine, computations=2, memory_mib=512)
    pid = _launch(machine, records[0])
    status, out, err, info = finish(machine, pid)
    assert (status, out, err) == run_native(GOJQ, [FILTER, os.fspath(records[0])], ENV)[:3], \
        info.exit_reason
    assert info.syscalls.get("clone", 0) >= 1  # the runtime's threads (sysmon at least)
    assert_clean(machine)


def test_gojq_moved_over_three_machines_prints_as_natively(
        make_machine: MakeMachine, records: list[Path]) -> None:
    need(GOJQ)
    machines = [make_machine(name=f"g{i}", quantum_us=1000, computations=2,
                             engine="emulated", memory_mib=512, pid_base=1000 * (i + 1))
                for i in range(3)]
    for path in records:  # a run moved with its threads, or the largest
        move = ThreadedMoves()
        pid = _launch(machines[0], path)
        where, _ = bounce(machines, pid, move=move, pause=0.02)
        status, out, err, info = finish(machines[where], pid)
        assert (status, out, err) == run_native(GOJQ, [FILTER, os.fspath(path)], ENV)[:3], \
            info.exit_reason
        if move.threaded:
            break
    assert move.threaded, "no move caught the process with its threads, even the largest run"
    for machine in machines:
        assert_clean(machine)
