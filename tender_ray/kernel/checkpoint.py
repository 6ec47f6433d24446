"""A machine's checkpoints: writing a process's image to a store where it survives the machine,
committing the output it covers, restarting a process from its last checkpoint, and the
periodic checkpointer.

A checkpoint freezes the process only for the copy of its pages (the same export a migration
makes, into a transport that copies), thaws it, then hashes the copy and writes only the pages
that changed since the last checkpoint (`migration.checkpoint`). Output commit: once a process
has a checkpoint (or its machine checkpoints periodically), the output it wrote after its last
checkpoint is held back from the owner until the next checkpoint is durably written, so a
restart repeats no output the owner already saw; the exit releases the rest. What a checkpoint
covers travels with the process when it migrates (`KernelState.output_commit`). A restart
claims its checkpoint in the store first (`CheckpointStore.claim`), so a crashed process runs
again once, however many restarters ask.

The periodic checkpointer keeps a due time per process (its newest checkpoint's time plus the
interval, early by what that checkpoint took: `due_after`). Two workers take the most overdue
first, and only one of them takes processes whose checkpoints are slow, so small processes never
wait behind large ones, and a process checkpointed late is not also late the next time. A
process is covered from the moment it arrives: the checkpoint store is shared, so the source's
newest checkpoint stays valid until the destination writes one; an arrival whose newest
checkpoint is already an interval old (or that has none) is checkpointed as part of its arrival,
before the migration that brought it is reported done.

`Checkpointing` is a part of `Machine` (mixed in), like the two sides of a migration.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter, deque
from typing import Any

import numpy as np
import numpy.typing as npt

from tender_ray import logs
from tender_ray.config import MachineConfig
from tender_ray.errors import CheckpointError, ProcessStateError, TenderError
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.migration.checkpoint import (
    FULL_EVERY,
    AlreadyRestartedError,
    CheckpointRecord,
    CheckpointStore,
    PageHashes,
    PlateCheckpointStore,
    RestartRecord,
    StaleBaseError,
    clock,
    make_delta,
)
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import Outcome
from tender_ray.migration.transports import LocalTransport, Transport
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process, RunState

CHECKPOINT_RECORDS_KEPT = 256  # recent checkpoint records a machine keeps for its metrics
# Periodic checkpoints taken at once on a machine: worker 0 takes any process, the others only
# those whose last checkpoint took under half the interval (or a slower one that ends before
# the next of those is due), so however many large processes a machine holds, the small ones
# do not wait behind them.
CHECKPOINT_WORKERS = 2


class CopyTransport:
    """Page blocks copied out of real memory (the process runs on once they are taken)."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        return np.array(block, copy=True)

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        return handle

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass


def held_output(p: Process, checkpointing: bool) -> tuple[int, int]:
    """How many bytes at the end of the process's stdout and stderr buffers are not yet
    covered by a checkpoint, and so held back from the owner (lock held)."""
    if p.state is RunState.ZOMBIE:
        return 0, 0  # the exit is the last commit
    commit = p.output_commit
    if commit is None:
        if not checkpointing:
            return 0, 0  # no checkpoint will ever cover it: stream it
        commit = (p.stdout_taken, p.stderr_taken)  # nothing covered yet
    out = max(0, p.stdout_taken + len(p.stdout) - max(commit[0], p.stdout_taken))
    err = max(0, p.stderr_taken + len(p.stderr) - max(commit[1], p.stderr_taken))
    return out, err


def due_after(record: CheckpointRecord, every: float) -> float:
    """When the process's next periodic checkpoint should begin: early by what its last one
    took, so it is written by about `every` after the last one began (the age it reaches then
    is `every`, not `every` plus the checkpoint's own time); but at least `every / 2` after
    it, so a process whose checkpoints take longer than that is not checkpointed without end
    (its age then reaches `every / 2` plus one checkpoint's time)."""
    return record.taken_at + max(every - record.seconds, every / 2)


class Checkpointing:
    """The calls that checkpoint this machine's processes and restart others'."""

    # The machine's state this side works on (set by `Machine.__init__`).
    name: str
    config: MachineConfig
    plate: Plate
    scheduler: Scheduler
    checkpoint_store: CheckpointStore  # where this machine's checkpoints go
    _checkpoint_lock: threading.Condition  # guards _checkpoint_busy
    _checkpoint_busy: set[int]  # pids a checkpoint is being taken of (one at a time each)
    _checkpoint_bases: dict[int, tuple[int, PageHashes]]  # pid -> (seq, hashes); the lock
    _chain_starts: dict[int, int]  # lock; pid -> seq of the full checkpoint its chain began at
    checkpoint_records: deque[CheckpointRecord]  # lock; the last ones taken here
    checkpoint_totals: Counter[str]  # lock; "ok", "failed", "bytes", "restarts"...
    restart_records: deque[RestartRecord]  # lock; processes restarted here
    _checkpoint_due: dict[int, float]  # lock; pid -> time.time() its next checkpoint is due
    _checkpoint_claimed: set[int]  # lock; pids a periodic worker has taken
    _checkpoint_cost: dict[int, float]  # lock; pid -> seconds its last checkpoint took
    _checkpointers: list[threading.Thread]
    _checkpointer_stop: threading.Event
    _checkpointer_wake: threading.Event  # an arrival may be due at once

    # Provided by the machine's migration sides (earlier in its bases, so these never run).
    def freeze(self, pid: int, timeout: float = 30.0) -> int:
        raise NotImplementedError

    def thaw(self, pid: int) -> None:
        raise NotImplementedError

    def export_image(self, pid: int, transport: Transport,
                     options: MigrationOptions) -> ProcessImage:
        raise NotImplementedError

    def create_incoming(self, mid: str, source: str, pid: int, frames: int,
                        reuse: bool) -> float:
        raise NotImplementedError

    def transform(self, image: ProcessImage, transport: Transport,
                  options: MigrationOptions, mid: str = "") -> dict[str, float]:
        raise NotImplementedError

    def commit(self, mid: str) -> Any:
        raise NotImplementedError

    def abort(self, mid: str) -> Any:
        raise NotImplementedError

    def _init_checkpoints(self) -> None:
        """Set up the checkpoint state (from `Machine.__init__`); the periodic checkpointer
        starts when the config asks for one."""
        spec = self.config.checkpoint
        where = spec.dir if spec is not None and spec.dir else self.plate.root / "checkpoints"
        self.checkpoint_store = PlateCheckpointStore(where)
        self._checkpoint_lock = threading.Condition()
        self._checkpoint_busy = set()
        self._checkpoint_bases = {}
        self._chain_starts = {}
        self.checkpoint_records = deque(maxlen=CHECKPOINT_RECORDS_KEPT)
        self.checkpoint_totals = Counter()
        self.restart_records = deque(maxlen=CHECKPOINT_RECORDS_KEPT)
        self._checkpoint_due = {}
        self._checkpoint_claimed = set()
        self._checkpoint_cost = {}
        self._checkpointers = []
        self._checkpointer_stop = threading.Event()
        self._checkpointer_wake = threading.Event()
        if spec is not None and spec.every is not None:
            for i in range(CHECKPOINT_WORKERS):
                thread = threading.Thread(target=self._checkpoint_periodically,
                                          args=(spec.every, i == 0), daemon=True,
                                          name=f"{self.name}-checkpointer-{i}")
                self._checkpointers.append(thread)
                thread.start()

    @property
    def checkpointing(self) -> bool:
        """Whether this machine checkpoints its processes periodically (and so holds their
        output until a checkpoint covers it)."""
        spec = self.config.checkpoint
        return spec is not None and spec.every is not None

    def checkpoint(self, pid: int, timeout: float = 30.0) -> CheckpointRecord:
        """Write process `pid`'s image to the checkpoint store; what it cost.

        The process is frozen only while its pages are copied. A process that a migration
        owns (it is migrating) is refused with ProcessStateError: checkpoint it where it
        lands. From its first checkpoint on, the process's output is held until the next
        checkpoint (or its exit) covers it. CheckpointError when the store cannot be
        written; the previous checkpoint then stays the valid one."""
        with self._checkpoint_lock:  # one checkpoint of a process at a time: its chain
            while pid in self._checkpoint_busy:
                self._checkpoint_lock.wait()
            self._checkpoint_busy.add(pid)
        try:
            record = self._checkpoint(pid, timeout)
        except TenderError:
            with self.scheduler.lock:
                self.checkpoint_totals["failed"] += 1
            raise
        finally:
            with self._checkpoint_lock:
                self._checkpoint_busy.discard(pid)
                self._checkpoint_lock.notify_all()
        spec = self.config.checkpoint
        with self.scheduler.lock:
            self.checkpoint_totals["ok"] += 1
            self.checkpoint_totals["bytes"] += record.bytes
            self.checkpoint_records.append(record)
            self._checkpoint_cost[pid] = record.seconds
            if spec is not None and spec.every is not None:
                self._checkpoint_due[pid] = due_after(record, spec.every)
        return record

    def checkpoint_arrival(self, pid: int) -> CheckpointRecord | None:
        """Cover a process that has just arrived here (from its migration's commit); the
        checkpoint written for it, or None when the one the store holds still covers it.

        The store is shared, so the source's newest checkpoint stays the valid one until this
        machine writes one: it is due an interval after it was taken. An arrival without one,
        or whose newest is already an interval old, is checkpointed here and now, before its
        migration is reported done, so a crash right after the arrival loses nothing and
        restarts it from a checkpoint no older than the arrival."""
        spec = self.config.checkpoint
        if spec is None or spec.every is None:
            return None
        try:
            taken_at = self.checkpoint_store.taken_at(pid)
        except CheckpointError:  # a corrupt manifest: a new full chain replaces it
            taken_at = None
        if taken_at is not None and time.time() - taken_at < spec.every:
            with self.scheduler.lock:
                self._checkpoint_due[pid] = taken_at + spec.every
            self._checkpointer_wake.set()
            return None
        try:
            return self.checkpoint(pid)
        except TenderError as exc:  # it ended or left already, or has threads
            logs.get("checkpoint").info("arrival not checkpointed", pid=pid, error=str(exc))
            with self.scheduler.lock:
                self._checkpoint_due[pid] = time.time()  # the checkpointer tries again
            self._checkpointer_wake.set()
            return None

    def _checkpoint(self, pid: int, timeout: float) -> CheckpointRecord:
        start = time.perf_counter()
        taken_at = time.time()
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state.migrating:
                raise ProcessStateError(f"process {pid} is migrating; checkpoint it on the "
                                        "machine it lands on, once it has arrived")
            if p.members:  # a restart makes one thread: the others' would be lost
                raise ProcessStateError(
                    f"process {pid} has {len(p.members) + 1} threads: a process with more "
                    "than one thread cannot be checkpointed yet (it runs on where it is)")
        self.freeze(pid, timeout)
        try:
            image = self.export_image(pid, CopyTransport(), MigrationOptions())
        finally:
            self.thaw(pid)
        if image.threads:  # it made a thread since the check above
            raise ProcessStateError(
                f"process {pid} has {len(image.threads)} threads: a process with more than "
                "one thread cannot be checkpointed yet (it runs on where it is)")
        frozen = time.perf_counter() - start
        # The copies the export made, hashed where they are (no whole extra copy).
        pages = [*image.text_blocks, *image.data_blocks]
        store = self.checkpoint_store
        with self.scheduler.lock:
            base = self._checkpoint_bases.get(pid)
        try:
            latest = store.latest(pid)
        except CheckpointError:  # a corrupt manifest: a new full chain replaces it
            latest, base = None, None
        with self.scheduler.lock:
            chain_start = self._chain_starts.get(pid, 0)
        if base is not None and (latest != base[0] or (latest or 0) - chain_start >=
                                 FULL_EVERY):
            base = None  # checkpointed elsewhere since, or the chain is long: a full one
        seq = 0 if latest is None else latest + 1
        delta, hashes = make_delta(image, pages, machine=self.name, taken_at=taken_at,
                                   seq=seq, parent=base[0] if base else -1,
                                   previous=base[1] if base else None)
        try:
            try:
                written = store.write(pid, delta)
            except StaleBaseError:  # another machine wrote one since: a full one instead
                delta, hashes = make_delta(image, pages, machine=self.name,
                                           taken_at=taken_at, seq=seq, parent=-1,
                                           previous=None)
                written = store.write(pid, delta)
        except OSError as exc:
            raise CheckpointError(f"checkpoint of process {pid} could not be written to "
                                  f"{store.where}: {exc}") from exc
        k = image.kernel
        with self.scheduler.lock:
            if delta.full:
                self._chain_starts[pid] = seq
            self._checkpoint_bases[pid] = (seq, hashes)
            p2 = self.scheduler.table.get(pid)
            if p2 is p:  # still here: what the checkpoint covers may go to the owner now
                old = p.output_commit or (0, 0)
                p.output_commit = (max(old[0], k.stdout_taken + len(k.stdout)),
                                   max(old[1], k.stderr_taken + len(k.stderr)))
        return CheckpointRecord(pid=pid, machine=self.name, seq=seq, taken_at=taken_at,
                                frozen_seconds=frozen, seconds=time.perf_counter() - start,
                                bytes=written, pages=sum(len(b) for b in pages),
                                pages_written=len(delta.vpns),
                                full=delta.full, store=store.where)

    def forget_checkpoint(self, pid: int) -> None:
        """The process ended and was collected: its checkpoints are of no more use."""
        with self.scheduler.lock:
            self._checkpoint_bases.pop(pid, None)
            self._chain_starts.pop(pid, None)
            self._checkpoint_due.pop(pid, None)
            self._checkpoint_cost.pop(pid, None)
        try:
            self.checkpoint_store.discard(pid)
        except OSError as exc:
            logs.get("checkpoint").warning("checkpoint not discarded", pid=pid, error=str(exc))

    def restart(self, pid: int, store: CheckpointStore | None = None, *,
                lost_machine: str = "", lost_at: float | None = None) -> RestartRecord:
        """Bring process `pid` back from its last checkpoint in `store` (default: this
        machine's) and run it here; the record. CheckpointError when it has none there or it
        is corrupt (nothing is made then).

        The restart claims the checkpoint in the store before it makes anything, so two
        restarts of one process never both run it: the second gets AlreadyRestartedError
        (where and when the first ran it), as it does when the newest checkpoint was taken
        after `lost_at` (when the machine this restart recovers, `lost_machine`, was found
        lost: a copy of the process ran on elsewhere). A claim held by `lost_machine` itself
        (restarted there, and lost with it) is taken over. A restart that fails gives its
        claim back."""
        start = time.perf_counter()
        began = time.time()
        store = store or self.checkpoint_store
        checkpoint = store.read(pid)
        if lost_at is not None and checkpoint.taken_at > lost_at:
            raise AlreadyRestartedError(
                f"process {pid} was checkpointed on machine {checkpoint.machine} at "
                f"{clock(checkpoint.taken_at)}, after machine {lost_machine or '(unnamed)'} "
                f"was found lost at {clock(lost_at)}: a copy of it ran on elsewhere, so "
                "nothing was made here", pid, checkpoint.machine, checkpoint.taken_at)
        image = checkpoint.image
        claim = store.claim(pid, checkpoint.seq, self.name, lost_machine)
        mid = f"restart-{pid}-{checkpoint.seq}-{uuid.uuid4().hex[:8]}"
        options = MigrationOptions()
        runs = False  # the copy joined this machine's table: the claim stands however we end
        try:
            self.create_incoming(mid, f"checkpoint@{checkpoint.machine}", pid, image.pages,
                                 self.config.reuse)
            try:
                self.transform(image, LocalTransport(), options, mid=mid)
                with self.scheduler.lock:
                    # The restored process: what the checkpoint saw is covered by it.
                    p = self.incoming.get(pid)  # type: ignore[attr-defined]
                    if p is not None:
                        k = image.kernel
                        p.output_commit = (k.stdout_taken + len(k.stdout),
                                           k.stderr_taken + len(k.stderr))
                self.commit(mid)
            except BaseException:
                # A fault after the commit leaves the copy running: then it keeps the claim.
                runs = self.abort(mid) is Outcome.COMMITTED
                raise
        except BaseException:
            if not runs:
                store.release(claim)  # nothing of it runs: another restart may try
            raise
        record = RestartRecord(pid=pid, name=image.kernel.name, machine=self.name,
                               lost_machine=checkpoint.machine, seq=checkpoint.seq,
                               taken_at=checkpoint.taken_at,
                               seconds=time.perf_counter() - start,
                               age_seconds=(lost_at if lost_at is not None else began)
                               - checkpoint.taken_at)
        with self.scheduler.lock:
            self.checkpoint_totals["restarts"] += 1
            self.restart_records.append(record)
        return record

    def recent_checkpoints(self) -> list[CheckpointRecord]:
        with self.scheduler.lock:
            return list(self.checkpoint_records)

    def _checkpoint_periodically(self, every: float, takes_large: bool) -> None:
        """Checkpoint each process here once it is due (CHECKPOINT_WORKERS threads run this):
        `due_after` its newest checkpoint, or `every` after its exec.
        Each worker takes the most overdue process no other worker has, one at a time; one
        whose last checkpoint took half the interval or more only if `takes_large`, or if it
        would end before the next fast one is due, so large processes hold up one worker and
        the others keep the small ones on time; and a late
        checkpoint does not make the next one late: each process is due by its own newest
        checkpoint, not by the end of a round."""
        log = logs.get("checkpoint")
        while not self._checkpointer_stop.is_set():
            if self.scheduler.stopped:
                return
            now = time.time()
            with self.scheduler.lock:
                here = {p.pid: p for p in self.scheduler.table.values()}
                pids = {pid for pid, p in here.items()
                        if p.state not in (RunState.ZOMBIE, RunState.EXITING)
                        and not p.state.migrating}
                due = self._checkpoint_due
                for gone in set(due) - set(here):
                    del due[gone]  # ended or left: the machine it went to keeps its own
                    self._checkpoint_cost.pop(gone, None)
                for pid in pids - set(due):  # exec'd here: an interval after its exec
                    created = here[pid].created_at
                    due[pid] = (created if created > 0 else now) + every
                free = pids - self._checkpoint_claimed
                cost = self._checkpoint_cost
                fast = {pid for pid in free if cost.get(pid, 0.0) < every / 2}
                if not takes_large:
                    # A slow one only when it ends before the next fast one is due.
                    next_fast = min((due[pid] for pid in fast), default=math.inf)
                    free = fast | {pid for pid in free - fast
                                   if max(now, due[pid]) + cost[pid] <= next_fast}
                ready = min(((due[pid], pid) for pid in free if due[pid] <= now),
                            default=None)
                upcoming = min((due[pid] for pid in free if due[pid] > now),
                               default=now + every)
                if ready is not None:
                    self._checkpoint_claimed.add(ready[1])
            if ready is None:
                self._checkpointer_wake.wait(max(0.0, min(upcoming - time.time(), every)))
                self._checkpointer_wake.clear()
                continue
            pid = ready[1]
            try:
                self.checkpoint(pid)
            except TenderError as exc:  # it ended, left, or is migrating: later
                log.info("checkpoint skipped", pid=pid, error=str(exc))
                with self.scheduler.lock:
                    if pid in self._checkpoint_due:
                        self._checkpoint_due[pid] = time.time() + every
            finally:
                with self.scheduler.lock:
                    self._checkpoint_claimed.discard(pid)

    def _stop_checkpointer(self) -> None:
        self._checkpointer_stop.set()
        self._checkpointer_wake.set()
        for thread in self._checkpointers:
            if thread is not threading.current_thread():
                thread.join(timeout=30)


__all__ = ["Checkpointing", "CopyTransport", "due_after", "held_output"]
