"""Checkpoints on a pair of in-process machines: written to a plate directory with checksums,
read back, incremental by page hashes, a crash during one, the output held until a checkpoint
covers it, and a process restarted on the other machine after its own was lost, its output
byte-identical to the native run of the same binary."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.machines import drain_output, merge_chunks, start, wait_state, wait_until
from support.programs import native

from tender_ray.config import CheckpointSpec, MachineConfig
from tender_ray.errors import CheckpointError, ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.metrics.collector import TenderCollector
from tender_ray.migration.checkpoint import FULL_EVERY, MemoryCheckpointStore, PlateCheckpointStore


def _machine(name: str, store: Path, every: float | None = None, pid_base: int = 1000
             ) -> Machine:
    spec = CheckpointSpec(every=every, dir=str(store))
    return Machine(MachineConfig(name=name, memory_mib=64, checkpoint=spec,
                                 quantum_us=5_000), pid_base=pid_base)


def _writes(m: Machine, pid: int) -> int:
    """How many writes the process has made (its system call counts)."""
    calls = m.info(pid).syscalls
    return calls.get("write", 0) + calls.get("writev", 0)


def _touched(m: Machine, pid: int) -> None:
    """Wait until memhold has filled its heap (it says so; output streams before any
    checkpoint on a machine that does not checkpoint periodically)."""
    seen = bytearray()

    def said() -> bool:
        seen.extend(m.take_output(pid)[0])
        return b"touched" in seen

    wait_until(said, what="memhold touched its heap")


def test_checkpoint_written_read_incremental_and_checked(tmp_path: Path) -> None:
    m = _machine("a", tmp_path)
    try:
        pid = start(m, "memhold", "4", "400", "10")
        _touched(m, pid)
        first = m.checkpoint(pid)
        second = m.checkpoint(pid)
        assert first.full and first.pages_written == first.pages > 1024
        # The heap did not change between them: only the stack and a few pages did.
        assert not second.full and second.seq == first.seq + 1
        assert second.pages_written < first.pages // 10
        assert second.bytes < first.bytes // 10
        store = PlateCheckpointStore(tmp_path)
        back = store.read(pid)
        assert back.seq == second.seq and back.image.pages == second.pages
        assert sum(len(b) for b in (*back.image.text_blocks, *back.image.data_blocks)) == (
            back.image.pages)
        # A delta that does not match its checksum: the checkpoint is corrupt, said so.
        delta = tmp_path / str(pid) / f"{first.seq}.delta"
        raw = bytearray(delta.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        delta.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match="checksum"):
            store.read(pid)
        delta.unlink()
        with pytest.raises(CheckpointError, match="missing"):
            store.read(pid)
        with pytest.raises(CheckpointError, match="no checkpoint"):
            store.read(pid + 1)
        stats = m.statistics()
        assert stats.checkpoints["ok"] == 2 and len(stats.checkpoint_records) == 2
        # The metrics: one full and one incremental checkpoint, each counted once however
        # often the same snapshot is read.
        collector = TenderCollector()
        collector.update({"a": stats})
        collector.update({"a": stats})
        families = {f.name: f for f in collector.collect()}
        counts = {s.labels["kind"]: s.value for s in
                  families["tender_checkpoint_duration_seconds"].samples
                  if s.name.endswith("_count")}
        assert counts == {"full": 1.0, "incremental": 1.0}
        written = [s.value for s in families["tender_checkpoint_bytes"].samples
                   if s.labels == {"machine": "a"}]
        assert written == [float(first.bytes + second.bytes)]
    finally:
        m.stop()


def test_crash_during_a_checkpoint_leaves_the_previous_one(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    m = _machine("a", tmp_path)
    try:
        pid = start(m, "memhold", "2", "400", "10")
        _touched(m, pid)
        first = m.checkpoint(pid)
        store = m.checkpoint_store
        real_put = type(store)._put

        def dies_at_the_manifest(self: PlateCheckpointStore, p: int, name: str,
                                 data: bytes) -> None:
            if name == "manifest":
                raise OSError("the machine died here")
            real_put(self, p, name, data)

        monkeypatch.setattr(type(store), "_put", dies_at_the_manifest)
        with pytest.raises(CheckpointError, match="could not be written"):
            m.checkpoint(pid)
        monkeypatch.undo()
        assert PlateCheckpointStore(tmp_path).read(pid).seq == first.seq
        assert m.checkpoint(pid).seq == first.seq + 1  # and the next one goes on from it
    finally:
        m.stop()


def test_a_migrating_process_is_not_checkpointed(tmp_path: Path) -> None:
    m = _machine("a", tmp_path)
    try:
        pid = start(m, "compute_sleep", "200")
        m.freeze(pid)  # as a migration does: it owns the process now
        with pytest.raises(ProcessStateError, match="migrating"):
            m.checkpoint(pid)
        m.thaw(pid)
        assert m.checkpoint(pid).full
    finally:
        m.stop()


def test_output_is_held_until_a_checkpoint_covers_it(tmp_path: Path) -> None:
    m = _machine("a", tmp_path, every=3600.0)  # periodic, but not within this test
    try:
        pid = start(m, "compute_sleep", "400")
        wait_until(lambda: _writes(m, pid) >= 2, what="a few rounds printed")
        assert m.take_output(pid) == (b"", b"")  # nothing is covered yet
        record = m.checkpoint(pid)
        out, _ = m.take_output(pid)
        assert out.startswith(b"round 0: ") and record.seq == 0
        written = _writes(m, pid)
        wait_until(lambda: _writes(m, pid) > written, what="another round printed")
        assert m.take_output(pid) == (b"", b"")  # what came after is held again
    finally:
        m.stop()


def test_restart_elsewhere_gives_the_native_output(tmp_path: Path) -> None:
    """A process checkpointed a few times on `a`, `a` lost, the process restarted on `b` from
    its last checkpoint: every line once, as natively."""
    rounds = "60"
    a = _machine("a", tmp_path, every=0.15)
    b = _machine("b", tmp_path, pid_base=5000)
    chunks: dict[int, bytes] = {}
    try:
        pid = start(a, "compute_sleep", rounds)
        wait_until(lambda: len(a.recent_checkpoints()) >= 3, timeout=30,
                   what="three periodic checkpoints")
        drain_output(a, chunks, pid)
        a.stop()  # the machine is lost, its process with it (the store survives)
        record = b.restart(pid, PlateCheckpointStore(tmp_path))
        assert record.machine == "b" and record.lost_machine == "a" and record.seq >= 2
        deadline = time.monotonic() + 60
        while not drain_output(b, chunks, pid):
            assert time.monotonic() < deadline, "the restarted process did not end"
            time.sleep(0.05)
        assert merge_chunks(chunks) == native("compute_sleep", rounds)[1]
        assert b.statistics().checkpoints["restarts"] == 1
    finally:
        a.stop()
        b.stop()


def test_buddy_memory_store_and_a_restart_without_checkpoint(tmp_path: Path) -> None:
    a = _machine("a", tmp_path)
    b = _machine("b", tmp_path, pid_base=5000)
    buddy = MemoryCheckpointStore("machine b")
    try:
        a.checkpoint_store = buddy
        pid = start(a, "memhold", "2", "400", "10")
        _touched(a, pid)
        a.checkpoint(pid)
        a.checkpoint(pid)
        assert buddy.pids() == [pid]
        with pytest.raises(CheckpointError, match="no checkpoint"):
            b.restart(pid + 7, buddy)
        assert b.list_processes() == []  # nothing was made for it
        wait_state(a, pid, ["sleeping", "running", "runnable"])
    finally:
        a.stop()
        b.stop()


def test_chains_stay_short_and_old_deltas_go(tmp_path: Path) -> None:
    m = _machine("a", tmp_path)
    try:
        pid = start(m, "memhold", "1", "2000", "10")
        _touched(m, pid)
        records = [m.checkpoint(pid) for _ in range(FULL_EVERY + 3)]
        fulls = [r.seq for r in records if r.full]
        assert fulls == [0, FULL_EVERY + 1]  # a full one again once the chain was long
        on_plate = sorted(int(f.stem) for f in (tmp_path / str(pid)).glob("*.delta"))
        assert on_plate == list(range(FULL_EVERY + 1, FULL_EVERY + 3))  # the old chain went
        assert PlateCheckpointStore(tmp_path).read(pid).seq == records[-1].seq
    finally:
        m.stop()
