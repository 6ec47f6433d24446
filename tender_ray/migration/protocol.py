"""The migration protocol, the paper's three steps driven by the source machine.

1. *create*: the destination makes a kernel process (from its pool when reuse is on);
2. *transform*: (I) give it the destination virtual space, (II) create the text regions and
   copy the text memory-to-memory through DSM (or, when a process there already maps the
   same text, map its frames read-only: content-addressed text, no text page travels),
   create the other regions, (III) copy data, BSS, heap, stack and mappings through DSM and
   set the registers;
3. *delete*: the source deletes its process, holding the resources for reuse.

Exactly one live copy under any single fault: every call carries the migration's id; the
destination holds what it made under a lease the source's calls renew (a silent source's
migration expires and can never commit); before the commit goes out the source's copy is
frozen and handed over, so only the migration's outcome can resume it. A commit answer means
delete; a lost or failed answer is settled by asking (an abort, which answers COMMITTED if the
commit had taken effect) until the destination answers or is known dead; the source resumes
its copy only on a definite not-committed outcome. While the source exports and transforms
the pages (a large process or a slow transport may take longer than a lease between two of
its calls) it renews the lease three times a lease, so a slow source keeps its migration and
only a silent one loses it. Only pages that were ever touched travel, batched into page
blocks. A pre-copy (`precopy.py`) adds live rounds before the freeze, under the same lease
(the destination stages their pages and builds the arriving space from them); the freeze then
sends only what changed since, and its transform call carries the commit (the process is
handed over before it goes out; a lost or failed answer is settled as a commit's is).
`run_migration` knows the two machines only as the `Source` and `Peer` protocols, which the
kernel's machine and the Ray layer's handles implement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt

from tender_ray.errors import (
    LeaseExpiredError,
    MachineStoppedError,
    MigrationError,
    NoReplyError,
    OutcomeUnknownError,
    TenderError,
    TextNotHeldError,
)
from tender_ray.migration import precopy
from tender_ray.migration.image import ProcessImage
from tender_ray.migration.options import MigrationMode, MigrationOptions, Resources
from tender_ray.migration.record import MigrationRecord, Outcome
from tender_ray.migration.transports import LocalTransport, Transport
from tender_ray.resources.dirty_pages import WrittenPages
from tender_ray.resources.real_memory import PAGE_SIZE


class Source(Protocol):
    """The source machine's side of a migration (the kernel's `Machine`)."""

    @property
    def name(self) -> str: ...

    def freeze(self, pid: int, timeout: float = 30.0) -> int: ...
    def thaw(self, pid: int, mid: str = "") -> None: ...
    def hand_over(self, pid: int, mid: str) -> None: ...
    def fault_point(self, phase: str) -> None: ...
    def program_size(self, pid: int) -> int: ...
    def export_image(self, pid: int, transport: Transport, options: MigrationOptions,
                     text_held: Callable[[str, str], bool] | None = None,
                     patch: precopy.FreezeSet | None = None
                     ) -> ProcessImage: ...
    def delete_migrated(self, pid: int, moved_bytes: int, reuse: bool) -> None: ...
    def note_migration(self, record: MigrationRecord) -> None: ...
    def migration_lease(self) -> float: ...
    # Pre-copy (`precopy.py`), asked for only by migrations in mode precopy or auto.
    def precopy_facts(self, pid: int) -> precopy.PrecopyFacts: ...
    def precopy_begin(self, pid: int) -> bool: ...
    def precopy_round(self, pid: int, transport: Transport, most: int | None,
                      fewest: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                                tuple[Any, ...] | None]: ...
    def precopy_layout(self, pid: int) -> ProcessImage: ...
    def precopy_end(self, pid: int) -> WrittenPages: ...
    def precopy_cancel(self, pid: int) -> None: ...


class Destination(Protocol):
    """The destination machine's side of a migration, as a machine in this process offers it
    (the kernel's `Machine`); `Peer` is the same reached from the source."""

    @property
    def name(self) -> str: ...

    def create_incoming(self, mid: str, source: str, pid: int, frames: int,
                        reuse: bool) -> float: ...
    def transform(self, image: ProcessImage, transport: Transport,
                  options: MigrationOptions, mid: str = "") -> dict[str, float]: ...
    def commit(self, mid: str) -> Outcome: ...
    def abort(self, mid: str) -> Outcome: ...
    def outcome(self, mid: str) -> Outcome: ...
    def renew(self, mid: str) -> Outcome: ...
    def record_migration(self, pid: int, record: MigrationRecord) -> None: ...
    def holds_text(self, program_digest: str, digest: str) -> bool: ...
    def precopy_pages(self, mid: str, vpns: npt.NDArray[np.int64],
                      handles: tuple[Any, ...], transport: Transport) -> int: ...


class Peer(Protocol):
    """The destination machine's migration calls (an actor handle or a local Machine)."""

    name: str

    def create(self, mid: str, source: str, pid: int, frames: int, reuse: bool) -> float: ...
    def transform(self, mid: str, image: ProcessImage,
                  options: MigrationOptions) -> dict[str, float]: ...
    def commit(self, mid: str) -> Outcome: ...
    def abort(self, mid: str) -> Outcome: ...
    def outcome(self, mid: str) -> Outcome: ...
    def renew(self, mid: str) -> Outcome: ...
    # Optional: `holds_text(program digest, text digest)`, whether the destination already
    # holds that text (content-addressed text); a peer without it is sent the text.
    # Optional: `precopy(mid, vpns, handles, options)`, one live round of a pre-copy
    # (`precopy.PrecopyPeer`); a peer without it takes every migration by stop-and-copy.


T = TypeVar("T")
_ids = itertools.count(1)
SETTLE_SECONDS = 60.0  # how long a source asks for a lost commit's outcome before giving up
_SETTLE_PAUSE = (0.02, 1.0)  # the first and the longest pause between two asks
# Renewals per lease while the source works on its own: one late or lost renewal still
# leaves two before the lease runs out.
RENEWS_PER_LEASE = 3


def new_migration_id(source: str) -> str:
    """A migration id unique across machines and restarts: the source's name, a counter and
    a random part (a restarted machine's counter starts again)."""
    return f"{source}:{next(_ids)}:{uuid.uuid4().hex[:12]}"


def settle(peer: Peer, mid: str, seconds: float = SETTLE_SECONDS) -> Outcome | None:
    """The definite outcome of migration `mid` after its commit answer was lost or failed:
    ask the destination to abort it (it answers COMMITTED if the commit took effect, and
    otherwise the abort makes sure it never will), again with back-off until it answers.
    None: the destination is known dead (what it committed died with it). Raises
    OutcomeUnknownError if it neither answers nor is known dead within `seconds`."""
    deadline = time.monotonic() + seconds
    pause, longest = _SETTLE_PAUSE
    last: BaseException | None = None
    while True:
        try:
            return peer.abort(mid)
        except NoReplyError as exc:  # alive, maybe: ask again
            last = exc
        except MachineStoppedError:
            return None
        except (TenderError, OSError) as exc:  # an error answer (a drill, a broken call)
            last = exc
        if time.monotonic() + pause > deadline:
            raise OutcomeUnknownError(
                f"migration {mid} to {peer.name}: the commit went out but {peer.name} gave "
                f"no outcome within {seconds:.0f} s ({last}); the process stays frozen on "
                "the source, handed over, until the outcome is known") from last
        time.sleep(pause)
        pause = min(pause * 2, longest)


@contextlib.contextmanager
def renewing(peer: Peer, mid: str, every: float) -> Iterator[None]:
    """Renew migration `mid`'s lease at `peer` every `every` seconds while the body runs: a
    step of the source's own that may outlast the lease between two of its calls (exporting
    a large process, a slow transport). Stopped as the body ends, however it ends, so a source
    that goes silent between its steps still has its migration expired.

    A renewal that fails is not an error here (the protocol's next call finds out what
    became of the migration); one that finds the migration no longer pending (aborted or
    expired there) stops the renewals, since there is nothing left to keep."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                outcome = peer.renew(mid)
            except (TenderError, OSError):
                continue  # late, lost or refused: the next renewal may get through
            if outcome is not Outcome.PENDING:
                return

    # A daemon, and not joined: a renewal in flight as the step ends must not hold up the
    # migration (it extends the lease once more, at most).
    threading.Thread(target=beat, name=f"renew {mid}", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


class _Call(Generic[T]):
    """A call run on a thread of its own while the caller goes on: `result` waits for it
    and returns its value or raises its error."""

    def __init__(self, call: Callable[[], T], at_once: bool = False) -> None:
        self._call = call
        self._value: T | None = None
        self._error: BaseException | None = None
        self.started = time.perf_counter()
        self.seconds = 0.0  # how long the call took, once it has
        self._thread: threading.Thread | None = None
        if at_once:  # nothing to overlap it with: run here, now
            self._run()
        else:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the caller by `result`
            self._error = exc
        self.seconds = time.perf_counter() - self.started

    def result(self) -> T:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def finished(self) -> T | None:
        """Its value once it has ended, or None if it failed."""
        if self._thread is not None:
            self._thread.join()
        return self._value


def run_migration(source: Source, pid: int, peer: Peer, transport: Transport,
                  options: MigrationOptions,
                  settle_seconds: float = SETTLE_SECONDS) -> MigrationRecord:
    """Migrate process `pid` of machine `source` to `peer`; the record of what happened.

    On a failure the error is raised with a note saying where the process is: still on the
    source (resumed), on the destination (committed; the source deleted its copy), or frozen
    on the source with the outcome unknown (OutcomeUnknownError).
    """
    started_at = time.time()
    if peer.name == source.name:
        raise MigrationError(f"process {pid} is already on machine {source.name}; a move "
                             "inside one machine is a virtual-space migration (local=True)")
    mid = new_migration_id(source.name)

    def finished(seconds: float, result: str = "ok", error: str = "") -> MigrationRecord:
        return MigrationRecord(
            pid=pid, source=source.name, destination=peer.name,
            transfer=options.transfer.value, reuse=options.reuse,
            resources=options.resources.value, seconds=seconds, bytes=nbytes, pages=pages,
            phases=phases, phase_starts=starts, result=result, error=error,
            started_at=started_at, migration_id=mid, text_pages=text_pages,
            text_shared=text_shared, mode=mode.value, rounds=live.rounds if live else 0,
            round_bytes=tuple(live.round_bytes) if live else (),
            freeze_bytes=freeze_bytes, freeze_seconds=freeze_seconds,
            dirty_rate=live.dirty_rate if live else 0.0,
            copy_rate=live.copy_rate if live else 0.0)

    def failed(exc: BaseException, where: str) -> None:
        exc.add_note(f"migration {mid}: process {pid} {where}")
        source.note_migration(finished(time.perf_counter() - start, "failed",
                                       f"{exc} ({where})"))

    phases: dict[str, float] = {}
    starts: dict[str, float] = {}  # seconds after `start`, as each phase begins
    nbytes = pages = text_pages = freeze_bytes = 0
    freeze_seconds = 0.0
    text_shared = False
    start = time.perf_counter()
    mode = _choose_mode(source, pid, peer, options)
    live: precopy.LiveRounds | None = None
    if mode is MigrationMode.PRECOPY:
        live = _live_rounds(source, pid, peer, transport, mid, options, phases, starts,
                            start, failed)
        if live is None:  # its writes are tracked for another purpose: stop-and-copy
            mode = MigrationMode.STOP
        else:
            nbytes = sum(live.round_bytes)
    frozen_at = time.perf_counter() if live is not None else start  # stop: it begins so
    starts["freeze"] = frozen_at - start
    try:
        frames = source.freeze(pid)
    except BaseException as exc:
        if live is not None:  # it ended (or would not stop): release what the rounds staged
            source.precopy_cancel(pid)
            with contextlib.suppress(TenderError, OSError):
                peer.abort(mid)
            failed(exc, f"was not frozen at {source.name}")
        raise
    phases["freeze"] = time.perf_counter() - frozen_at
    image: ProcessImage | None = None
    exporting: _Call[ProcessImage] | None = None
    created = live is not None  # the live rounds' destination holds their pages
    patch: precopy.FreezeSet | None = None  # what the freeze adds to the live rounds
    transformed: dict[str, float] = {}

    def transform() -> None:
        """The transform call (with the commit in it for a pre-copy: one round trip while
        frozen), and once more with the text if the text it would share has gone."""
        nonlocal image, transformed, pages, text_pages, text_shared, nbytes, freeze_bytes
        assert image is not None
        try:
            transformed = peer.transform(mid, image, options)
        except TextNotHeldError:
            # The process whose text it would share ended meanwhile (nothing was made
            # there): send the text after all, once.
            stale, image = image, None
            transport.discard(stale.handles)
            image = _committing(source.export_image(pid, transport, options, None, patch))
            pages = image.pages_sent
            text_pages, text_shared = image.text_pages_sent, image.text_shared
            nbytes += text_pages * PAGE_SIZE  # the program's pages, sent this time
            freeze_bytes += text_pages * PAGE_SIZE
            transformed = peer.transform(mid, image, options)

    def transformed_at(t: float) -> None:
        """Phases and starts of the transform call made at `t`."""
        phases.update(transformed)
        # What the transform call cost beyond the destination's own work: the round trip.
        phases["transform_call"] = time.perf_counter() - t - sum(transformed.values())
        # Transform I-III run on the destination inside the call, one after another: each
        # starts at the call's start plus the destination phases before it (in the order the
        # destination reports them, I, II, III, the commit); the round trip follows them.
        offset = t - start
        for name, seconds in transformed.items():
            starts[name] = offset
            offset += seconds
        starts["transform_call"] = offset

    try:
        t = time.perf_counter()
        # Content-addressed text: the export asks the destination (while the create call
        # runs) whether it already holds this text; if it does, no text page is put.
        held: Callable[[str, str], bool] | None = getattr(peer, "holds_text", None)
        if live is not None and held is not None and live.text_known:
            held = _known_first(live.text_known, held)
        if live is not None:
            # Created (and its space built) before the freeze: only what changed since the
            # last live round goes. Nothing to overlap the export with: it runs here.
            patch = live.at_freeze(source.precopy_end(pid))
            exporting = _Call(lambda: _committing(
                source.export_image(pid, transport, options, held, patch)), at_once=True)
        else:
            source.fault_point("before_create")
            created = True  # from here the destination may hold something: abort on failure
            # The export overlaps the create call's round trip: the source puts the first
            # page blocks while the destination makes its kernel process.
            exporting = _Call(lambda: source.export_image(pid, transport, options, held)
                              if held is not None else
                              source.export_image(pid, transport, options))
            phases["create"] = peer.create(mid, source.name, pid, frames, options.reuse)
            source.fault_point("after_create")
            phases["create_call"] = time.perf_counter() - t - phases["create"]
            # The destination's create runs inside the call; where in it the source cannot
            # see, so it is placed at the call's start and the call's round trip after it.
            starts["create"] = t - start
            starts["create_call"] = t - start + phases["create"]
        starts["export"] = exporting.started - start
        # Export and transform may take longer than the lease between two calls of ours: the
        # lease is renewed while they run (the destination keeps it during its own calls).
        with renewing(peer, mid, source.migration_lease() / RENEWS_PER_LEASE):
            image = exporting.result()
            phases["export"] = exporting.seconds
            pages = image.pages_sent
            text_pages, text_shared = image.text_pages_sent, image.text_shared
            freeze_bytes = image.pages_sent * PAGE_SIZE + (
                source.program_size(pid) if options.resources is Resources.ALL else 0)
            nbytes += freeze_bytes
            t = time.perf_counter()
            source.fault_point("before_transform")
            if live is None:
                exporting = None  # (a second export's image is this one's to discard)
                transform()
        if live is None:
            source.fault_point("after_transform")
            transformed_at(t)
        # Before the commit goes out, the copy here can no longer be resumed by anyone but
        # this migration's outcome: it runs at the destination only once it cannot run here.
        source.hand_over(pid, mid)
        source.fault_point("before_commit")
    except BaseException as exc:
        # No commit went out: the destination cannot run the process. Release what it made
        # (once: if it does not answer, its lease releases it), resume here (once the export
        # has stopped reading its pages).
        if image is None and exporting is not None:
            image = exporting.finished()
        if live is not None:
            source.precopy_cancel(pid)  # still tracked if the freeze's take did not happen
        if created:
            with contextlib.suppress(TenderError, OSError):
                peer.abort(mid)
        source.thaw(pid, mid)
        if image is not None:
            transport.discard(image.handles)
        failed(exc, f"runs on at {source.name}")
        raise
    t = time.perf_counter()
    starts["commit"] = t - start
    error: BaseException | None = None
    # A pre-copy's commit goes out with its transform: whatever that call raises, the
    # outcome is asked for, as for a commit whose answer was lost.
    answered: type[BaseException] | tuple[type[BaseException], ...] = (
        Exception if live is not None else (TenderError, OSError))
    try:
        if live is not None:
            transform()
            transformed_at(t)
            phases["commit"] = transformed.get("commit", 0.0)
            outcome: Outcome | None = Outcome.COMMITTED  # it raises otherwise
        else:
            outcome = peer.commit(mid)
    except answered as exc:  # the answer was lost, late or an error
        error = exc
        try:
            outcome = settle(peer, mid, settle_seconds)
        except OutcomeUnknownError as unknown:
            _discard(transport, image)
            failed(unknown, f"is frozen on {source.name}, handed over to {peer.name}")
            raise
    if live is None or "commit" not in transformed:
        phases["commit"] = time.perf_counter() - t
    freeze_seconds = time.perf_counter() - frozen_at  # it runs at the destination from here
    if outcome is not Outcome.COMMITTED:  # definite: it will never run there
        source.thaw(pid, mid)
        _discard(transport, image)
        where = f"runs on at {source.name}"
        if outcome is Outcome.EXPIRED:
            error = LeaseExpiredError(
                f"migration {mid}: {peer.name} released it, its lease expired before the "
                "commit; try again (a longer MachineConfig.migration_lease_s on the "
                "destination if the source is slow)")
        elif error is None:
            error = MachineStoppedError(
                f"migration {mid}: {peer.name} answered {outcome.value if outcome else 'dead'}"
                " to the commit (restarted, or it aborted the migration)")
        failed(error, where)
        raise error
    # Committed: the process is the destination's; whatever fails from here, delete it.
    t = time.perf_counter()
    starts["delete"] = t - start
    late: BaseException | None = None  # a fault here does not undo the move
    try:
        if live is not None:  # (its transform went out with the commit)
            source.fault_point("after_transform")
        source.fault_point("after_commit")
        source.fault_point("before_delete")
    except BaseException as exc:
        late = exc
    source.delete_migrated(pid, nbytes, options.reuse)
    phases["delete"] = time.perf_counter() - t
    _discard(transport, image)
    if late is None:
        try:
            source.fault_point("after_delete")
        except BaseException as exc:
            late = exc
    record = finished(time.perf_counter() - start)
    source.note_migration(record)
    if late is not None:
        late.add_note(f"migration {mid}: process {pid} runs at {peer.name} (it moved; the "
                      f"source deleted its copy)")
        raise late
    return record


def _choose_mode(source: Source, pid: int, peer: Peer,
                 options: MigrationOptions) -> MigrationMode:
    """STOP or PRECOPY for this migration: as asked, "auto" by what the source knows of the
    process; a peer that cannot stage live rounds takes it by stop-and-copy."""
    if options.mode is MigrationMode.STOP or getattr(peer, "precopy", None) is None:
        return MigrationMode.STOP
    facts = source.precopy_facts(pid) if options.mode is MigrationMode.AUTO else None
    return precopy.choose_mode(options.mode, facts)


def _live_rounds(source: Source, pid: int, peer: Peer, transport: Transport, mid: str,
                 options: MigrationOptions, phases: dict[str, float],
                 starts: dict[str, float], start: float,
                 failed: Callable[[BaseException, str], None]) -> precopy.LiveRounds | None:
    """A pre-copy's create and live rounds, the process running at the source throughout;
    None (nothing done) if its writes are tracked for another purpose. On a failure the
    tracking stops, the destination is told to abort (its lease frees what it staged if it
    does not answer), the failed record is kept and the error raised: the process has not
    stopped running at its source."""
    started = False
    created = False
    try:
        if not source.precopy_begin(pid):
            return None
        started = True
        t = time.perf_counter()
        source.fault_point("before_create")
        created = True
        frames = source.precopy_facts(pid).resident_pages
        phases["create"] = peer.create(mid, source.name, pid, frames, options.reuse)
        source.fault_point("after_create")
        phases["create_call"] = time.perf_counter() - t - phases["create"]
        starts["create"] = t - start
        starts["create_call"] = t - start + phases["create"]
        t = time.perf_counter()
        starts["precopy"] = t - start
        rounds_peer = cast(precopy.PrecopyPeer, peer)  # it has `precopy` (_choose_mode)
        with renewing(peer, mid, source.migration_lease() / RENEWS_PER_LEASE):
            live = precopy.live_rounds(source, pid, rounds_peer, transport, mid, options)
            # Transform (III) made iterative: the destination builds the arriving space
            # from the staged pages while the process still runs here, so the freeze only
            # patches it with what was written since.
            layout = source.precopy_layout(pid)
            peer.transform(mid, layout, options)
            # Content-addressed text asked about now, not while it is frozen (a holder that
            # ends meanwhile makes the transform send the text after all).
            ask: Callable[[str, str], bool] | None = getattr(peer, "holds_text", None)
            if layout.text_digest and ask is not None:
                key = (layout.program.digest, layout.text_digest)
                live.text_known[key] = bool(ask(*key))
        phases["precopy"] = time.perf_counter() - t
        return live
    except BaseException as exc:
        if started:
            source.precopy_cancel(pid)
        if created:
            with contextlib.suppress(TenderError, OSError):
                peer.abort(mid)
        failed(exc, f"runs on at {source.name}")
        raise


def _discard(transport: Transport, image: ProcessImage | None) -> None:
    """Let go of the blocks of the image sent last (none if a second export failed)."""
    if image is not None:
        transport.discard(image.handles)


def _committing(image: ProcessImage) -> ProcessImage:
    """A pre-copy's freeze image, marked to be committed by its transform call (the source
    hands the process over before that call goes out)."""
    if image.precopy is None:
        return image
    return dataclasses.replace(image, precopy=dataclasses.replace(image.precopy, commit=True))


def _known_first(known: dict[tuple[str, str], bool],
                 ask: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    """`ask`, answered from `known` where it holds the answer."""
    def held(program_digest: str, digest: str) -> bool:
        answer = known.get((program_digest, digest))
        return ask(program_digest, digest) if answer is None else answer
    return held


class LocalPeer:
    """A destination machine in the same process: migrations without Ray (tests, tools)."""

    def __init__(self, machine: Destination, transport: Transport) -> None:
        self.machine = machine
        self.name: str = machine.name
        self.transport = transport

    def create(self, mid: str, source: str, pid: int, frames: int, reuse: bool) -> float:
        return float(self.machine.create_incoming(mid, source, pid, frames, reuse))

    def transform(self, mid: str, image: ProcessImage,
                  options: MigrationOptions) -> dict[str, float]:
        return self.machine.transform(image, self.transport, options, mid)

    def commit(self, mid: str) -> Outcome:
        return self.machine.commit(mid)

    def abort(self, mid: str) -> Outcome:
        return self.machine.abort(mid)

    def outcome(self, mid: str) -> Outcome:
        return self.machine.outcome(mid)

    def renew(self, mid: str) -> Outcome:
        return self.machine.renew(mid)

    def holds_text(self, program_digest: str, digest: str) -> bool:
        return self.machine.holds_text(program_digest, digest)

    def precopy(self, mid: str, vpns: npt.NDArray[np.int64], handles: tuple[Any, ...],
                options: MigrationOptions) -> int:
        return self.machine.precopy_pages(mid, vpns, handles, self.transport)


def migrate_local(source: Source, pid: int, destination: Destination,
                  options: MigrationOptions | None = None,
                  transport: Transport | None = None) -> MigrationRecord:
    """Migrate between two machines of this process; the record, also kept by the process."""
    options = options or MigrationOptions()
    if transport is None:
        transport = LocalTransport()
    record = run_migration(source, pid, LocalPeer(destination, transport), transport, options)
    destination.record_migration(pid, record)  # a plain call: stored when it returns
    return record
