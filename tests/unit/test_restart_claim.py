"""One restart per checkpoint: a restart claims the checkpoint it restarts from in the store
(a file only one restarter can make on a plate directory, an entry made under the lock of a
buddy's memory store), so a second restart of the same crashed process is refused with where
and when the first ran it; a claim held by a machine lost since is taken over by the restart
that recovers that machine; a restart that fails gives its claim back. And what a checkpoint
covers of a process's output travels with it when it migrates, so a migrated process that
crashes repeats none of the output its owner was given."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import pytest
from support.machines import start, wait_until
from support.programs import native

from tender_ray.config import CheckpointSpec, FaultSpec, MachineConfig
from tender_ray.errors import CheckpointError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import OutputChunk
from tender_ray.migration.checkpoint import (
    AlreadyRestartedError,
    CheckpointStore,
    MemoryCheckpointStore,
    PlateCheckpointStore,
)
from tender_ray.migration.faults import FaultInjected
from tender_ray.migration.protocol import migrate_local


def _stores(tmp_path: Path) -> list[CheckpointStore]:
    return [PlateCheckpointStore(tmp_path), MemoryCheckpointStore("machine z")]


@pytest.mark.parametrize("kind", [0, 1], ids=["plate", "memory"])
def test_a_checkpoint_is_claimed_once(tmp_path: Path, kind: int) -> None:
    store = _stores(tmp_path)[kind]
    first = store.claim(7, 3, "b")
    with pytest.raises(AlreadyRestartedError, match=r"already restarted from checkpoint 3 on "
                       r"machine b at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}") as refused:
        store.claim(7, 3, "c")
    assert (refused.value.pid, refused.value.machine, refused.value.at) == (7, "b", first.at)
    assert isinstance(refused.value, CheckpointError)  # what older callers catch
    with pytest.raises(AlreadyRestartedError):
        store.claim(7, 3, "b")  # the same machine again: its copy runs already
    # Another checkpoint of the process is another claim.
    assert store.claim(7, 4, "c").machine == "c"
    # A restart recovering a machine other than the holder's is refused too ...
    with pytest.raises(AlreadyRestartedError, match="machine b"):
        store.claim(7, 3, "c", lost_machine="a")
    # ... but once the holder is the lost machine, its copy died with it: taken over.
    second = store.claim(7, 3, "c", lost_machine="b")
    assert second.generation == first.generation + 1
    with pytest.raises(AlreadyRestartedError, match="machine c"):
        store.claim(7, 3, "d", lost_machine="b")  # a second recoverer of b comes too late
    # Releasing the claim that was taken over drops nothing of the newer one.
    store.release(first)
    with pytest.raises(AlreadyRestartedError, match="machine c"):
        store.claim(7, 3, "d", lost_machine="a")
    store.release(second)  # that restart failed: the one before it (b's, lost) is the newest
    assert store.claim(7, 3, "d", lost_machine="b").machine == "d"
    store.discard(7)  # the process ended: its claims go with its checkpoints
    assert store.claim(7, 3, "e").generation == 0


def test_the_refusal_crosses_a_process_boundary_intact() -> None:
    store = MemoryCheckpointStore()
    store.claim(5, 0, "b")
    with pytest.raises(AlreadyRestartedError) as refused:
        store.claim(5, 0, "c")
    back = pickle.loads(pickle.dumps(refused.value))
    assert type(back) is AlreadyRestartedError
    assert (str(back), back.pid, back.machine, back.at) == (
        str(refused.value), 5, "b", refused.value.at)


@pytest.mark.parametrize("kind", [0, 1], ids=["plate", "memory"])
def test_racing_claims_have_one_winner(tmp_path: Path, kind: int) -> None:
    store = _stores(tmp_path)[kind]
    go = threading.Barrier(8)
    won: list[str] = []
    refused: list[str] = []

    def restarter(name: str) -> None:
        go.wait()
        try:
            won.append(store.claim(9, 0, name).machine)
        except AlreadyRestartedError as exc:
            refused.append(exc.machine)

    threads = [threading.Thread(target=restarter, args=(f"m{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert set(refused) == set(won)  # every loser is told who won
    if kind == 0:  # the plate holds one claim, no temporary file left behind
        assert sorted(f.name for f in (tmp_path / "9").iterdir()) == ["restart-0.0.claim"]


def _machine(name: str, store: Path, pid_base: int, every: float | None = None,
             fault: FaultSpec | None = None) -> Machine:
    spec = CheckpointSpec(every=every, dir=str(store))
    return Machine(MachineConfig(name=name, memory_mib=64, checkpoint=spec, quantum_us=5_000,
                                 fault=fault), pid_base=pid_base)


def _run_out(m: Machine, pid: int, taken: bytearray, timeout: float = 60.0) -> None:
    """Take the process's stdout on `m` until it ends, then reap it."""
    deadline = time.monotonic() + timeout
    while m.info(pid).state != "zombie":
        assert time.monotonic() < deadline, "the process did not end"
        taken += m.take_output(pid)[0]
        time.sleep(0.02)
    taken += m.reap(pid)[1]


def test_two_restarts_of_one_crashed_process_run_one_copy(tmp_path: Path) -> None:
    a = _machine("a", tmp_path, 1000)
    b = _machine("b", tmp_path, 5000, fault=FaultSpec(phase="transform_space"))
    c = _machine("c", tmp_path, 9000)
    d = _machine("d", tmp_path, 13000)
    try:
        pid = start(a, "compute_sleep", "40")
        time.sleep(0.1)
        a.checkpoint(pid)
        a.stop()  # lost
        # b breaks while it restarts: nothing of it runs, and it gives its claim back ...
        with pytest.raises(FaultInjected):
            b.restart(pid, lost_machine="a")
        assert b.list_processes() == []
        # ... so c may restart it; d, which comes second, is told where it runs.
        record = c.restart(pid, lost_machine="a")
        assert record.machine == "c" and record.lost_machine == "a"
        with pytest.raises(AlreadyRestartedError, match=f"process {pid} was already "
                           "restarted from checkpoint 0 on machine c") as refused:
            d.restart(pid, lost_machine="a")
        assert refused.value.machine == "c"
        assert d.list_processes() == []  # nothing was made for it
        out = bytearray()
        _run_out(c, pid, out)
        assert bytes(out) == native("compute_sleep", "40")[1]
    finally:
        for m in (a, b, c, d):
            m.stop()


def test_a_copy_that_runs_keeps_its_claim_and_a_lost_one_is_taken_over(tmp_path: Path
                                                                        ) -> None:
    a = _machine("a", tmp_path, 1000)
    b = _machine("b", tmp_path, 5000, fault=FaultSpec(phase="after_commit"))
    c = _machine("c", tmp_path, 9000)
    try:
        pid = start(a, "compute_sleep", "400")
        a.checkpoint(pid)
        a.stop()
        # The fault fires once the copy joined b's table: it runs, so the claim stands.
        with pytest.raises(FaultInjected):
            b.restart(pid, lost_machine="a")
        assert [p.pid for p in b.list_processes()] == [pid]
        with pytest.raises(AlreadyRestartedError, match="machine b"):
            c.restart(pid, lost_machine="a")
        b.stop()  # b is lost before it checkpointed the process: its copy went with it
        assert c.restart(pid, lost_machine="b").machine == "c"
        assert [p.pid for p in c.list_processes()] == [pid]
    finally:
        for m in (a, b, c):
            m.stop()


def test_a_checkpoint_taken_after_the_loss_is_not_restarted(tmp_path: Path) -> None:
    """A restarter slow enough that the copy another one made has checkpointed since: that
    checkpoint is no copy of the lost machine's process, and is not restarted a second time."""
    a = _machine("a", tmp_path, 1000)
    b = _machine("b", tmp_path, 5000)
    try:
        pid = start(a, "compute_sleep", "400")
        lost_at = time.time()  # when "the machine was found lost", as the restarter saw it
        time.sleep(0.05)
        a.checkpoint(pid)  # a live copy, checkpointed after that
        with pytest.raises(AlreadyRestartedError, match="after machine x was found lost"):
            b.restart(pid, lost_machine="x", lost_at=lost_at)
        assert b.list_processes() == []
    finally:
        a.stop()
        b.stop()


def _keep(chunks: dict[int, bytes], taken: tuple[OutputChunk, ...]) -> int:
    """Keep the stdout chunks by offset; the stream's end they reach (0: none)."""
    reach = 0
    for c in taken:
        if c.fd == 1:
            chunks[c.offset] = c.data
            reach = c.offset + len(c.data)
    return reach


def _writes(m: Machine, pid: int) -> int:
    calls = m.info(pid).syscalls
    return calls.get("write", 0) + calls.get("writev", 0)


def _merge(chunks: dict[int, bytes]) -> bytes:
    """One stream from chunks by offset, overlaps written once (as every driver does)."""
    out = bytearray()
    for offset, data in sorted(chunks.items()):
        assert offset <= len(out), f"output lost before offset {offset}"
        out += data[len(out) - offset:]
    return bytes(out)


def test_what_a_checkpoint_covers_travels_with_a_migration(tmp_path: Path) -> None:
    """Checkpointed on `a`, migrated to `p` (which checkpoints periodically, not within this
    test) and on to `b` (which does not by itself), `b` lost, restarted on `c` from `a`'s
    checkpoint. `p` hands over what the checkpoint covers and no more; `b` holds everything
    after it (the restart writes that again); the owner's stream is the native one."""
    rounds = "150"  # ~40 rounds to a write (stdout is a pipe: buffered)
    a = _machine("a", tmp_path, 1000)
    p = _machine("p", tmp_path, 3000, every=3600.0)
    b = _machine("b", tmp_path, 5000)
    c = _machine("c", tmp_path, 9000)
    chunks: dict[int, bytes] = {}
    try:
        pid = start(a, "compute_sleep", rounds)
        wait_until(lambda: _writes(a, pid) >= 2, what="output written")  # none taken
        a.checkpoint(pid)
        migrate_local(a, pid, p)
        # The checkpoint covers what was written before it: given at once, not held.
        reach = _keep(chunks, p.take_chunks(pid))
        assert reach > 0 and _merge(chunks).startswith(b"round 0: ")
        migrate_local(p, pid, b)
        before = _writes(b, pid)
        wait_until(lambda: _writes(b, pid) > before, what="output after the checkpoint")
        assert b.take_chunks(pid) == ()  # held: no checkpoint covers it
        b.stop()  # lost, and what it held with it
        assert c.restart(pid, lost_machine="b").lost_machine == "a"
        deadline = time.monotonic() + 60
        while c.info(pid).state != "zombie":
            assert time.monotonic() < deadline, "the restarted process did not end"
            _keep(chunks, c.take_chunks(pid))
            time.sleep(0.02)
        _keep(chunks, c.take_chunks(pid))
        merged = _merge(chunks)
        assert merged == native("compute_sleep", rounds)[1]
        lines = merged.splitlines()
        assert len(lines) == len(set(lines)) == int(rounds) + 1
    finally:
        for m in (a, p, b, c):
            m.stop()
