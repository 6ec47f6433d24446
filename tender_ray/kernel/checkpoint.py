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

`Checkpointing` is a part of `Machine` (mixed in), like the two sides of a migration.
"""

from __future__ import annotations

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


class Checkpointing:
    """The calls that checkpoint this machine's processes and restart others'."""

    # The machine's state this side works on (set by `Machine.__init__`).
    name: str
    config: MachineConfig
    plate: Plate
    scheduler: Scheduler
    checkpoint_store: CheckpointStore  # where this machine's checkpoints go
    _checkpoint_lock: threading.Lock  # one checkpoint at a time on this machine
    _checkpoint_bases: dict[int, tuple[int, PageHashes]]  # pid -> (seq, hashes); the lock
    _chain_starts: dict[int, int]  # lock; pid -> seq of the full checkpoint its chain began at
    checkpoint_records: deque[CheckpointRecord]  # lock; the last ones taken here
    checkpoint_totals: Counter[str]  # lock; "ok", "failed", "bytes", "restarts"...
    restart_records: deque[RestartRecord]  # lock; processes restarted here
    _checkpointer: threading.Thread | None
    _checkpointer_stop: threading.Event

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
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_bases = {}
        self._chain_starts = {}
        self.checkpoint_records = deque(maxlen=CHECKPOINT_RECORDS_KEPT)
        self.checkpoint_totals = Counter()
        self.restart_records = deque(maxlen=CHECKPOINT_RECORDS_KEPT)
        self._checkpointer = None
        self._checkpointer_stop = threading.Event()
        if spec is not None and spec.every is not None:
            self._checkpointer = threading.Thread(target=self._checkpoint_periodically,
                                                  args=(spec.every,), daemon=True,
                                                  name=f"{self.name}-checkpointer")
            self._checkpointer.start()

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
        with self._checkpoint_lock:
            try:
                record = self._checkpoint(pid, timeout)
            except TenderError:
                with self.scheduler.lock:
                    self.checkpoint_totals["failed"] += 1
                raise
        with self.scheduler.lock:
            self.checkpoint_totals["ok"] += 1
            self.checkpoint_totals["bytes"] += record.bytes
            self.checkpoint_records.append(record)
        return record

    def _checkpoint(self, pid: int, timeout: float) -> CheckpointRecord:
        start = time.perf_counter()
        taken_at = time.time()
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            if p.state.migrating:
                raise ProcessStateError(f"process {pid} is migrating; checkpoint it on the "
                                        "machine it lands on, once it has arrived")
        self.freeze(pid, timeout)
        try:
            image = self.export_image(pid, CopyTransport(), MigrationOptions())
        finally:
            self.thaw(pid)
        frozen = time.perf_counter() - start
        blocks = [*image.text_blocks, *image.data_blocks]
        pages = np.concatenate(blocks) if blocks else np.zeros((0, 4096), dtype=np.uint8)
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
                                bytes=written, pages=len(pages), pages_written=len(delta.vpns),
                                full=delta.full, store=store.where)

    def forget_checkpoint(self, pid: int) -> None:
        """The process ended and was collected: its checkpoints are of no more use."""
        with self.scheduler.lock:
            self._checkpoint_bases.pop(pid, None)
            self._chain_starts.pop(pid, None)
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
                               seconds=time.perf_counter() - start)
        with self.scheduler.lock:
            self.checkpoint_totals["restarts"] += 1
            self.restart_records.append(record)
        return record

    def recent_checkpoints(self) -> list[CheckpointRecord]:
        with self.scheduler.lock:
            return list(self.checkpoint_records)

    def _checkpoint_periodically(self, every: float) -> None:
        """Checkpoint every process here each `every` seconds (a thread of its own)."""
        log = logs.get("checkpoint")
        while not self._checkpointer_stop.wait(every):
            if self.scheduler.stopped:
                return
            with self.scheduler.lock:
                pids = [p.pid for p in self.scheduler.table.values()
                        if p.state not in (RunState.ZOMBIE, RunState.EXITING)
                        and not p.state.migrating]
            for pid in pids:
                if self._checkpointer_stop.is_set():
                    return
                try:
                    self.checkpoint(pid)
                except TenderError as exc:  # it ended, left, or is migrating: next round
                    log.info("checkpoint skipped", pid=pid, error=str(exc))

    def _stop_checkpointer(self) -> None:
        self._checkpointer_stop.set()
        thread = self._checkpointer
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)


__all__ = ["Checkpointing", "CopyTransport", "held_output"]
