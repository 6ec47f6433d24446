"""A process is covered by a checkpoint from the moment it arrives: on in-process machines
sharing one checkpoint store, an arrival that has no checkpoint anywhere is checkpointed as
part of its arrival (before the migration returns), one whose source checkpoint is younger
than the interval keeps that one, and either restarts from it on a third machine after the
destination is lost, with the native output. When the next periodic checkpoint is due, and the
report's checkpoint ages, from the checkpoint records a run saw."""

from __future__ import annotations

import time
from pathlib import Path

from support.machines import drain_output, merge_chunks, start, wait_until
from support.programs import native

from tender_ray.cli.scenario.report import CheckpointAges, RestartedProcess
from tender_ray.config import CheckpointSpec, MachineConfig
from tender_ray.kernel.checkpoint import due_after
from tender_ray.kernel.machine import Machine
from tender_ray.migration.checkpoint import CheckpointRecord, PlateCheckpointStore
from tender_ray.migration.protocol import migrate_local

ROUNDS = "60"  # compute_sleep: rounds of computing and sleeping, a line each
# No periodic checkpoint can come due while a test runs: an exec'd process is due an interval
# after its exec, so every checkpoint these tests see is one they asked for or an arrival wrote.
LONG = 3600.0


def _machine(name: str, store: Path, every: float | None, pid_base: int) -> Machine:
    return Machine(MachineConfig(name=name, memory_mib=64, quantum_us=5_000,
                                 checkpoint=CheckpointSpec(every=every, dir=str(store))),
                   pid_base=pid_base)


def _said_something(m: Machine, pid: int, chunks: dict[int, bytes]) -> None:
    wait_until(lambda: drain_output(m, chunks, pid) or bool(chunks), what="a first line")


def _restart_to_end(c: Machine, pid: int, store: PlateCheckpointStore,
                    chunks: dict[int, bytes]) -> None:
    c.restart(pid, store)
    deadline = time.monotonic() + 60
    while not drain_output(c, chunks, pid):
        assert time.monotonic() < deadline, "the restarted process did not end"
        time.sleep(0.05)


def test_an_arrival_without_a_checkpoint_is_checkpointed_as_it_arrives(tmp_path: Path
                                                                       ) -> None:
    a = _machine("a", tmp_path, None, 1000)  # checkpoints only when asked: none here
    b = _machine("b", tmp_path, LONG, 5000)
    c = _machine("c", tmp_path, None, 9000)
    store = PlateCheckpointStore(tmp_path)
    chunks: dict[int, bytes] = {}
    try:
        pid = start(a, "compute_sleep", ROUNDS)
        _said_something(a, pid, chunks)
        assert store.latest(pid) is None
        record = migrate_local(a, pid, b)
        # Written by the arrival itself, before the migration returned.
        [written] = b.recent_checkpoints()
        assert written.pid == pid and written.machine == "b" and written.full
        assert written.taken_at >= record.started_at
        assert store.taken_at(pid) == written.taken_at
        drain_output(b, chunks, pid)
        b.stop()  # lost right after the arrival: the arrival's checkpoint covers it
        _restart_to_end(c, pid, store, chunks)
        assert c.restart_records[0].seq == written.seq
        assert merge_chunks(chunks) == native("compute_sleep", ROUNDS)[1]
    finally:
        for m in (a, b, c):
            m.stop()


def test_an_arrival_keeps_its_young_source_checkpoint(tmp_path: Path) -> None:
    """The store is shared: the source's checkpoint, younger than the interval, stays the
    valid one at the destination, which writes none until it is due."""
    a = _machine("a", tmp_path, None, 1000)
    b = _machine("b", tmp_path, LONG, 5000)
    c = _machine("c", tmp_path, None, 9000)
    store = PlateCheckpointStore(tmp_path)
    chunks: dict[int, bytes] = {}
    try:
        pid = start(a, "compute_sleep", ROUNDS)
        _said_something(a, pid, chunks)
        taken = a.checkpoint(pid)
        migrate_local(a, pid, b)
        assert b.recent_checkpoints() == []
        assert store.latest(pid) == taken.seq and store.taken_at(pid) == taken.taken_at
        drain_output(b, chunks, pid)
        b.stop()
        _restart_to_end(c, pid, store, chunks)
        assert c.restart_records[0].seq == taken.seq
        assert c.restart_records[0].lost_machine == "a"  # where the checkpoint was taken
        assert merge_chunks(chunks) == native("compute_sleep", ROUNDS)[1]
    finally:
        for m in (a, b, c):
            m.stop()


def _record(pid: int, machine: str, seq: int, taken_at: float, seconds: float
            ) -> CheckpointRecord:
    return CheckpointRecord(pid=pid, machine=machine, seq=seq, taken_at=taken_at,
                            frozen_seconds=0.01, seconds=seconds, bytes=4096, pages=1,
                            pages_written=1, full=seq == 0, store="plate")


def test_checkpoint_ages_span_machines_and_count_restarts() -> None:
    """Ages run from one checkpoint's start to the next one being written, whichever machine
    took each; a record seen in several polls counts once; a restart adds its age at loss."""
    records = [_record(7, "m0", 0, 100.0, 0.1), _record(7, "m0", 0, 100.0, 0.1),
               _record(7, "m1", 1, 100.5, 0.2), _record(7, "m1", 2, 101.0, 0.1),
               _record(8, "m0", 0, 100.0, 0.1)]
    restart = RestartedProcess(8, "sieve#1", "m0", "m1", 0, 1.5, 3.0)
    ages = CheckpointAges.of(records, [restart], {7: "memhold#0", 8: "sieve#1"}, 0.3)
    assert ages.max_seconds == 1.5
    assert ages.per_process[0] == ("sieve#1", 1.5, 1.5, 0.1)
    name, p50, top, slowest = ages.per_process[1]
    assert name == "memhold#0" and abs(p50 - 0.65) < 1e-9 and abs(top - 0.7) < 1e-9
    assert slowest == 0.2
    assert ages.as_dict()["max_over_every"] == 5.0
    assert CheckpointAges.of([], [], {}, 0.3).max_seconds is None


def test_the_next_checkpoint_is_due_early_by_what_the_last_one_took() -> None:
    """Written by about an interval after the last one began; never sooner than half an
    interval after it, however slow the checkpoints."""
    assert due_after(_record(7, "m0", 1, 100.0, 0.1), 0.5) == 100.4
    assert due_after(_record(7, "m0", 1, 100.0, 0.0), 0.5) == 100.5
    assert due_after(_record(7, "m0", 1, 100.0, 3.0), 0.5) == 100.25
