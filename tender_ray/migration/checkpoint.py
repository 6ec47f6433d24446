"""Checkpoints: a process image kept where it survives its machine, so that a crashed machine's
processes restart elsewhere from their last one.

A checkpoint is a chain of deltas: a full one (every page with contents) and the incremental
ones after it, each holding only the pages whose contents changed since the one before (found
by a content hash per page, which works the same on both engines: neither tracks dirty pages in
its page-table entries). Each delta carries the whole process image without its page blocks
(registers, areas, kernel state — whatever `KernelState` holds), so the newest delta says what
the process was and the chain says what its pages held.

A store keeps the chains: `PlateCheckpointStore` as files on a plate directory (a shared one on
one host, or a buddy machine's plate), `MemoryCheckpointStore` in memory (a buddy machine
keeping another's checkpoints, as Charm++'s double in-memory checkpoint). Both keep a sha-256
checksum per delta, verified on reading, and make a new checkpoint visible only once it is
whole (a manifest replaced atomically), so a crash during a checkpoint leaves the previous one
valid.

A restart claims the checkpoint it restarts from in the store, atomically, before it makes
anything (`claim`): of two restarters of one crashed process (an `exec` driver and a cluster's
restart watch, say), only the first runs a copy; the second is told where the first put it
(`AlreadyRestartedError`). A claim held by a machine that is itself lost since may be taken
over by the restart that recovers that machine; a restart that fails gives its claim back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tender_ray.errors import CheckpointError
from tender_ray.migration.image import AreaImage, ProcessImage
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE

FULL_EVERY = 16  # a full checkpoint after this many incremental ones: chains stay short
PageHashes = dict[int, bytes]  # virtual page number -> the digest of its contents


@dataclass(frozen=True)
class CheckpointRecord:
    """What one checkpoint cost, as statistics, metrics and reports show it."""

    pid: int
    machine: str  # where the process ran when it was taken
    seq: int  # its number in the process's chain of checkpoints (0, 1, ...)
    taken_at: float  # time.time() when the process was frozen for it
    frozen_seconds: float  # the process stood still this long (the copy of its pages)
    seconds: float  # the whole checkpoint: freeze, copy, hash, write
    bytes: int  # written to the store
    pages: int  # pages with contents
    pages_written: int  # of those, changed since the last checkpoint and so written
    full: bool  # not relative to an earlier one
    store: str  # where it went


@dataclass(frozen=True)
class RestartRecord:
    """One process brought back from its last checkpoint after its machine was lost."""

    pid: int
    name: str
    machine: str  # where it runs now
    lost_machine: str  # where it ran when the checkpoint was taken
    seq: int
    taken_at: float  # the checkpoint's time: what ran after it was done again
    seconds: float  # reading the checkpoint and rebuilding the process
    # How old the checkpoint was when its machine was found lost (or the restart began):
    # the checkpoint age the interval promises to bound.
    age_seconds: float = 0.0


@dataclass(frozen=True)
class CheckpointDelta:
    """One link of a chain: the image without blocks and the pages that changed."""

    seq: int
    parent: int  # the seq this one is relative to; -1 for a full checkpoint
    taken_at: float
    machine: str
    image: ProcessImage  # text_blocks/data_blocks empty: the pages are below
    vpns: npt.NDArray[np.int64]  # virtual page numbers of `pages`, one per row
    pages: npt.NDArray[np.uint8]  # (n, 4096)

    @property
    def full(self) -> bool:
        return self.parent < 0


@dataclass(frozen=True)
class Checkpoint:
    """A whole checkpoint, read back from a chain: an image ready for a transform (its blocks
    are arrays, so `LocalTransport` carries them)."""

    seq: int
    taken_at: float
    machine: str
    image: ProcessImage


def area_vpns(areas: Sequence[AreaImage]) -> list[int]:
    """The virtual page numbers of the areas' present pages, in block order."""
    return [(a.start >> PAGE_SHIFT) + i for a in areas for i in a.present]


def page_hashes(vpns: Sequence[int], pages: npt.NDArray[np.uint8]) -> PageHashes:
    """A digest of each page's contents (blake2b, 16 bytes: cheap, and collisions are out of
    reach for data that is not chosen against it)."""
    return {vpn: hashlib.blake2b(pages[i].data, digest_size=16).digest()
            for i, vpn in enumerate(vpns)}


def make_delta(image: ProcessImage, pages: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]],
               *, machine: str, taken_at: float, seq: int, parent: int,
               previous: PageHashes | None) -> tuple[CheckpointDelta, PageHashes]:
    """The delta of an image whose pages (text, then the others, in block order) are `pages`
    (one array, or the blocks the export copied them into), against the hashes of the
    checkpoint before (None: a full one); and the new hashes. The blocks are hashed where
    they are and only the pages kept are copied, once: a large process's checkpoint makes no
    whole extra copy of it."""
    blocks = [pages] if isinstance(pages, np.ndarray) else list(pages)
    vpns = area_vpns((*image.text_areas, *image.other_areas))
    count = sum(len(b) for b in blocks)
    if len(vpns) != count:
        raise ValueError(f"{count} pages for {len(vpns)} present pages of the image")
    hashes: PageHashes = {}
    at = 0
    for b in blocks:
        hashes.update(page_hashes(vpns[at:at + len(b)], b))
        at += len(b)
    if previous is None:
        keep = np.ones(len(vpns), dtype=bool)
        parent = -1
    else:
        keep = np.fromiter((previous.get(v) != h for v, h in hashes.items()), dtype=bool,
                           count=len(vpns))
    if keep.all():
        kept = (blocks[0] if len(blocks) == 1 else np.concatenate(blocks) if blocks
                else np.zeros((0, PAGE_SIZE), dtype=np.uint8))
    else:
        parts, at = [], 0
        for b in blocks:
            parts.append(b[keep[at:at + len(b)]])
            at += len(b)
        kept = np.concatenate(parts) if parts else np.zeros((0, PAGE_SIZE), dtype=np.uint8)
    bare = dataclasses.replace(image, text_blocks=(), data_blocks=(), program_image=None)
    delta = CheckpointDelta(seq=seq, parent=parent, taken_at=taken_at, machine=machine,
                            image=bare, vpns=np.asarray(vpns, dtype=np.int64)[keep],
                            pages=np.ascontiguousarray(kept))
    return delta, hashes


def assemble(chain: Sequence[CheckpointDelta]) -> Checkpoint:
    """The checkpoint a chain (full first, newest last) adds up to. CheckpointError when a
    page the newest image needs is in none of the deltas."""
    if not chain or not chain[0].full:
        raise CheckpointError("the checkpoint chain does not start with a full checkpoint")
    contents: dict[int, npt.NDArray[np.uint8]] = {}
    for delta in chain:
        for i, vpn in enumerate(delta.vpns.tolist()):
            contents[vpn] = delta.pages[i]
    last = chain[-1]
    image = last.image

    def block(areas: Sequence[AreaImage]) -> tuple[npt.NDArray[np.uint8], ...]:
        vpns = area_vpns(areas)
        if not vpns:
            return ()
        missing = [v for v in vpns if v not in contents]
        if missing:
            raise CheckpointError(f"checkpoint {last.seq} of process {image.pid} lacks "
                                  f"{len(missing)} pages (first at {missing[0] << PAGE_SHIFT:#x})")
        return (np.stack([contents[v] for v in vpns]),)

    whole = dataclasses.replace(image, text_blocks=block(image.text_areas),
                                data_blocks=block(image.other_areas))
    return Checkpoint(seq=last.seq, taken_at=last.taken_at, machine=last.machine, image=whole)


class StaleBaseError(CheckpointError):
    """An incremental checkpoint whose parent is not the store's newest one (the process was
    checkpointed elsewhere meanwhile): take a full one instead."""


@dataclass(frozen=True)
class RestartClaim:
    """A restart's hold on one checkpoint of a process: the copy it makes is the only one."""

    pid: int
    seq: int  # the checkpoint restarted from
    machine: str  # where the restart runs the process
    at: float  # time.time() of the claim
    generation: int = 0  # one more each time a lost machine's claim is taken over

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @staticmethod
    def decode(raw: bytes) -> RestartClaim:
        return RestartClaim(**json.loads(raw))


class AlreadyRestartedError(CheckpointError):
    """The process was restarted already (another restart claimed its checkpoint first, or a
    copy of it was checkpointed after its machine was lost): it runs on `machine` since `at`,
    and nothing was made here. Not a loss: whoever asked has nothing left to do for it."""

    def __init__(self, message: str, pid: int, machine: str, at: float) -> None:
        super().__init__(message)
        self.pid = pid
        self.machine = machine
        self.at = at

    def __reduce__(self) -> tuple[type[AlreadyRestartedError], tuple[str, int, str, float]]:
        # Raised inside a machine actor, it must cross back to the caller intact.
        return (type(self), (str(self), self.pid, self.machine, self.at))

    @staticmethod
    def of(claim: RestartClaim) -> AlreadyRestartedError:
        return AlreadyRestartedError(
            f"process {claim.pid} was already restarted from checkpoint {claim.seq} on "
            f"machine {claim.machine} at {clock(claim.at)}: that copy is the one that runs; "
            "nothing was made here", claim.pid, claim.machine, claim.at)


def clock(t: float) -> str:
    """A time.time() as a reader wants it in a message: the local date and time, to the ms."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


CLAIM_TRIES = 8  # rounds of reading the newest claim and trying to add one (releases race)


class CheckpointStore(Protocol):
    """Where checkpoints survive their machine."""

    @property
    def where(self) -> str: ...
    def write(self, pid: int, delta: CheckpointDelta) -> int: ...
    def read(self, pid: int) -> Checkpoint: ...
    def latest(self, pid: int) -> int | None: ...
    def taken_at(self, pid: int) -> float | None: ...
    def discard(self, pid: int) -> None: ...
    def pids(self) -> list[int]: ...
    def claim(self, pid: int, seq: int, machine: str,
              lost_machine: str = "") -> RestartClaim: ...
    def release(self, claim: RestartClaim) -> None: ...


def _encode(delta: CheckpointDelta) -> bytes:
    return pickle.dumps(delta, protocol=5)


class _ChainStore:
    """A store over named blobs: each delta one blob with its checksum in a manifest, the
    manifest replaced last (what makes a checkpoint visible, all at once)."""

    where = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one writer per store at a time

    # The blobs, by subclass.
    def _put(self, pid: int, name: str, data: bytes) -> None:
        raise NotImplementedError

    def _get(self, pid: int, name: str) -> bytes | None:
        raise NotImplementedError

    def _drop(self, pid: int, names: Sequence[str]) -> None:
        raise NotImplementedError

    def discard(self, pid: int) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    # The claims, by subclass: each (pid, seq, generation) added at most once, atomically.
    def _claims(self, pid: int, seq: int) -> dict[int, bytes]:
        """The claims on checkpoint `seq` of the process, by generation."""
        raise NotImplementedError

    def _add_claim(self, claim: RestartClaim) -> bool:
        """Add the claim unless its generation exists already; whether it was added."""
        raise NotImplementedError

    def _drop_claim(self, claim: RestartClaim) -> None:
        raise NotImplementedError

    def claim(self, pid: int, seq: int, machine: str, lost_machine: str = "") -> RestartClaim:
        """Claim checkpoint `seq` of process `pid` for a restart on `machine`, before the
        restart makes anything. AlreadyRestartedError when another restart holds it, unless
        that one ran the process on `lost_machine` (the machine this restart recovers, lost
        since): its copy died with it, and this claim takes over."""
        for _ in range(CLAIM_TRIES):
            claims = self._claims(pid, seq)
            generation = 0
            if claims:
                newest = max(claims)
                try:
                    held = RestartClaim.decode(claims[newest])
                except (ValueError, TypeError):
                    raise CheckpointError(
                        f"the restart claim {newest} on checkpoint {seq} of process {pid} at "
                        f"{self.where} is corrupt; remove it if no copy of the process "
                        "runs") from None
                if not lost_machine or held.machine != lost_machine:
                    raise AlreadyRestartedError.of(held)
                generation = newest + 1
            mine = RestartClaim(pid, seq, machine, time.time(), generation)
            if self._add_claim(mine):
                return mine
            # Another restarter added this generation first: read again, it is the newest.
        raise CheckpointError(f"checkpoint {seq} of process {pid} at {self.where} could not "
                              f"be claimed in {CLAIM_TRIES} tries (claims come and go); try "
                              "again")

    def release(self, claim: RestartClaim) -> None:
        """Give back a claim whose restart failed (nothing of it runs): another may try."""
        self._drop_claim(claim)

    def _manifest(self, pid: int) -> dict[str, Any] | None:
        raw = self._get(pid, "manifest")
        if raw is None:
            return None
        try:
            manifest: dict[str, Any] = json.loads(raw)
            return manifest
        except ValueError:
            raise CheckpointError(f"the checkpoint manifest of process {pid} at {self.where} "
                                  "is corrupt") from None

    def latest(self, pid: int) -> int | None:
        """The seq of the process's newest checkpoint here (None: it has none)."""
        manifest = self._manifest(pid)
        return None if manifest is None else int(manifest["chain"][-1]["seq"])

    def taken_at(self, pid: int) -> float | None:
        """When the process's newest checkpoint here was taken (time.time(); None: it has
        none)."""
        manifest = self._manifest(pid)
        return None if manifest is None else float(manifest["taken_at"])

    def write(self, pid: int, delta: CheckpointDelta) -> int:
        """Add a delta to the process's chain; the bytes written. StaleBaseError when an
        incremental delta's parent is not the newest checkpoint here."""
        data = _encode(delta)
        blob = f"{delta.seq}.delta"
        entry: dict[str, Any] = {"seq": delta.seq, "blob": blob,
                                 "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        with self._lock:
            manifest = self._manifest(pid)
            if delta.full or manifest is None:
                if not delta.full:
                    raise StaleBaseError(f"process {pid} has no checkpoint at {self.where} "
                                         "to add to; take a full one")
                old = [] if manifest is None else manifest["chain"]
                chain = [entry]
            else:
                old = manifest["chain"]
                if int(old[-1]["seq"]) != delta.parent:
                    raise StaleBaseError(
                        f"checkpoint {delta.seq} of process {pid} is relative to "
                        f"{delta.parent}, but the newest at {self.where} is {old[-1]['seq']}; "
                        "take a full one")
                chain = [*old, entry]
            self._put(pid, blob, data)
            self._put(pid, "manifest", json.dumps(
                {"pid": pid, "chain": chain, "taken_at": delta.taken_at,
                 "machine": delta.machine}).encode())
            kept = {e["blob"] for e in chain}
            self._drop(pid, [e["blob"] for e in old if e["blob"] not in kept])
        return len(data)

    def read(self, pid: int) -> Checkpoint:
        """The process's newest whole checkpoint. CheckpointError when it has none here, or a
        delta is missing or does not match its checksum."""
        manifest = self._manifest(pid)
        if manifest is None:
            raise CheckpointError(f"process {pid} has no checkpoint at {self.where}")
        chain: list[CheckpointDelta] = []
        for entry in manifest["chain"]:
            data = self._get(pid, entry["blob"])
            if data is None:
                raise CheckpointError(f"checkpoint {entry['seq']} of process {pid} is "
                                      f"missing at {self.where}")
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CheckpointError(f"checkpoint {entry['seq']} of process {pid} at "
                                      f"{self.where} does not match its checksum (corrupt)")
            chain.append(pickle.loads(data))
        return assemble(chain)


class PlateCheckpointStore(_ChainStore):
    """Checkpoints as files on a plate directory: `<dir>/<pid>/<seq>.delta` and a manifest,
    each written to a temporary name, synced, then renamed into place."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        self.where = str(self.root)

    def _put(self, pid: int, name: str, data: bytes) -> None:
        folder = self.root / str(pid)
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the manifest names it
        os.replace(tmp, folder / name)

    def _get(self, pid: int, name: str) -> bytes | None:
        try:
            return (self.root / str(pid) / name).read_bytes()
        except FileNotFoundError:
            return None

    def _drop(self, pid: int, names: Sequence[str]) -> None:
        for name in names:
            (self.root / str(pid) / name).unlink(missing_ok=True)

    def discard(self, pid: int) -> None:
        folder = self.root / str(pid)
        if folder.is_dir():
            for f in folder.iterdir():
                f.unlink(missing_ok=True)
            folder.rmdir()

    def pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.root.iterdir()
                      if p.name.isdigit() and (p / "manifest").exists())

    # A claim is the file `restart-<seq>.<generation>.claim`, which only one restarter can
    # make: written whole under a name of its own, then hard-linked to the claim's name, which
    # fails if it exists (as an O_EXCL create would, but the claim never shows half written,
    # so a restarter dying mid-claim leaves no empty marker that nobody can read).
    def _claims(self, pid: int, seq: int) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for f in (self.root / str(pid)).glob(f"restart-{seq}.*.claim"):
            generation = f.name.split(".")[1]
            try:
                if generation.isdigit():
                    found[int(generation)] = f.read_bytes()
            except FileNotFoundError:
                continue  # released while we looked
        return found

    def _claim_path(self, claim: RestartClaim) -> Path:
        return self.root / str(claim.pid) / f"restart-{claim.seq}.{claim.generation}.claim"

    def _add_claim(self, claim: RestartClaim) -> bool:
        target = self._claim_path(claim)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(claim.encode())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        except OSError as exc:
            raise CheckpointError(f"checkpoint {claim.seq} of process {claim.pid} could not be "
                                  f"claimed at {self.where}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_claim(self, claim: RestartClaim) -> None:
        target = self._claim_path(claim)
        try:
            if target.read_bytes() == claim.encode():  # ours, not one that took over since
                target.unlink()
        except FileNotFoundError:
            pass


class MemoryCheckpointStore(_ChainStore):
    """Checkpoints kept in this process's memory (a buddy machine keeping another's)."""

    def __init__(self, where: str = "memory") -> None:
        super().__init__()
        self.where = where
        self._blobs: dict[int, dict[str, bytes]] = {}
        # (pid, seq) -> generation -> claim; made and read under the store's lock, so two
        # restarters (two threads of the buddy's actor) cannot both add one generation.
        self._claimed: dict[tuple[int, int], dict[int, bytes]] = {}

    def _put(self, pid: int, name: str, data: bytes) -> None:
        self._blobs.setdefault(pid, {})[name] = data

    def _get(self, pid: int, name: str) -> bytes | None:
        return self._blobs.get(pid, {}).get(name)

    def _drop(self, pid: int, names: Sequence[str]) -> None:
        blobs = self._blobs.get(pid, {})
        for name in names:
            blobs.pop(name, None)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._blobs.pop(pid, None)
            for key in [k for k in self._claimed if k[0] == pid]:
                del self._claimed[key]

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(pid for pid, blobs in self._blobs.items() if "manifest" in blobs)

    def _claims(self, pid: int, seq: int) -> dict[int, bytes]:
        with self._lock:
            return dict(self._claimed.get((pid, seq), {}))

    def _add_claim(self, claim: RestartClaim) -> bool:
        with self._lock:
            claims = self._claimed.setdefault((claim.pid, claim.seq), {})
            if claim.generation in claims:
                return False
            claims[claim.generation] = claim.encode()
            return True

    def _drop_claim(self, claim: RestartClaim) -> None:
        with self._lock:
            claims = self._claimed.get((claim.pid, claim.seq), {})
            if claims.get(claim.generation) == claim.encode():
                del claims[claim.generation]


__all__ = ["CLAIM_TRIES", "FULL_EVERY", "PAGE_SIZE", "AlreadyRestartedError", "Checkpoint",
           "CheckpointDelta", "CheckpointRecord", "CheckpointStore", "MemoryCheckpointStore",
           "PageHashes", "PlateCheckpointStore", "RestartClaim", "RestartRecord",
           "StaleBaseError", "area_vpns", "assemble", "clock", "make_delta", "page_hashes"]
