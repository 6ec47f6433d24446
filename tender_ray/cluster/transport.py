"""DSM over Ray's object store, and the choice of transport a migration asks for: the object
store (memory to memory) or files on the plate every machine shares (the NFS-like path).

A migration's page blocks are sized to the object store of the source's node and never fill
it: the first group of blocks is put while the source exports; the others stay where they are
(views of the frozen process's frames) and the destination fetches them from the source's
actor a few groups ahead of its copying, so a move larger than the store is streamed through
it and the source's copy out overlaps the destination's copy in. Each page is copied once on
the way out (into the store) and once on the way in (into frames); same-node reads are
zero-copy.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray

from tender_ray.errors import MigrationError
from tender_ray.migration.options import MigrationOptions, Transfer
from tender_ray.migration.transports import PlateTransport, Transport
from tender_ray.resources.real_memory import PAGE_SIZE

Block = npt.NDArray[np.uint8]

# Of the node's object store, one migration uses at most this share at once (blocks put and
# fetched ahead), so several migrations at a time still never make it spill.
STORE_SHARE = 8
MIN_BLOCK = 1 << 20
MAX_BLOCK = 32 << 20


@dataclass(frozen=True)
class StoredBlock:
    """A page block in the object store: item `index` of the object `ref` (a list of
    blocks put together)."""

    ref: Any
    index: int


@dataclass(frozen=True)
class OfferedBlock:
    """A page block left at its source until the destination fetches it: item `index` of
    group `group` of the source's offer `token`, served by the source machine's actor."""

    source: Any  # the source machine's actor handle
    token: str
    group: int
    index: int


# The source side of offered blocks, in the source machine's actor process: token -> groups
# of blocks (views of a frozen process's frames, valid until its migration discards them).
_offers: dict[str, list[list[Block]]] = {}
_offers_lock = threading.Lock()
_store_bytes: dict[str, int] = {}  # node id -> its object store's size


def serve_offer(token: str, group: int) -> list[Block]:
    """The blocks of group `group` of offer `token` (the machine actor's `read_offer`)."""
    with _offers_lock:
        groups = _offers.get(token)
    if groups is None or not 0 <= group < len(groups):
        raise MigrationError(f"no page blocks offered as {token} group {group} here: the "
                             "migration that offered them has ended; start a new one")
    return groups[group]


def node_store_bytes() -> int:
    """The size of this node's object store (0 when Ray does not say)."""
    node = str(ray.get_runtime_context().get_node_id())
    if node not in _store_bytes:
        size = 0
        for n in ray.nodes():
            if n.get("NodeID") == node:
                size = int(n.get("Resources", {}).get("object_store_memory", 0))
        _store_bytes[node] = size
    return _store_bytes[node]


def _current_actor() -> Any:
    try:
        return ray.get_runtime_context().current_actor
    except RuntimeError:  # not inside an actor (a driver): everything is put at once
        return None


class RayTransport:
    """DSM over the object store: page blocks put in groups, each group one object; the
    groups past the first are offered by the source and fetched by the destination as it
    copies (at most 1/STORE_SHARE of the store at a time)."""

    def __init__(self, store_bytes: int | None = None, timeout: float = 120.0) -> None:
        self._store = store_bytes
        self.timeout = timeout  # seconds for one group to arrive

    def _sizes(self) -> tuple[int, int]:
        """Bytes per group, and groups in flight at once."""
        store = self._store if self._store is not None else node_store_bytes()
        if store <= 0:
            return MAX_BLOCK, 2
        window = store // STORE_SHARE
        group = min(MAX_BLOCK, max(MIN_BLOCK, window // 4)) // PAGE_SIZE * PAGE_SIZE
        return group, max(1, window // group - 1)

    @property
    def block_pages(self) -> int:
        return self._sizes()[0] // PAGE_SIZE

    def put(self, block: Block) -> Any:
        return StoredBlock(ray.put([block]), 0)

    def get(self, handle: Any) -> Block:
        return next(self.get_many([handle]))

    def put_many(self, blocks: Sequence[Block]) -> tuple[Any, ...]:
        """One handle per block: the first group put now, the others offered."""
        group_bytes, _ = self._sizes()
        groups: list[list[Block]] = []
        size = group_bytes
        for block in blocks:
            if size + block.nbytes > group_bytes:
                groups.append([])
                size = 0
            groups[-1].append(block)
            size += block.nbytes
        if not groups:
            return ()
        first = ray.put(groups[0])
        handles: list[Any] = [StoredBlock(first, i) for i in range(len(groups[0]))]
        rest = groups[1:]
        if rest:
            actor = _current_actor()
            if actor is None:
                for g in rest:
                    ref = ray.put(g)
                    handles += [StoredBlock(ref, i) for i in range(len(g))]
            else:
                token = uuid.uuid4().hex
                with _offers_lock:
                    _offers[token] = rest
                handles += [OfferedBlock(actor, token, k, i)
                            for k, g in enumerate(rest) for i in range(len(g))]
        return tuple(handles)

    def get_many(self, handles: Sequence[Any]) -> Iterator[Block]:
        """The blocks in order; offered groups requested a few ahead of the one copied."""
        _, ahead = self._sizes()
        keys: dict[Any, int] = {}
        groups: list[Any] = []  # the first handle of each group, in order of use
        order: list[tuple[int, int]] = []  # per handle: (group position, item)
        for h in handles:
            key = h.ref if isinstance(h, StoredBlock) else (h.token, h.group)
            if key not in keys:
                keys[key] = len(groups)
                groups.append(h)
            order.append((keys[key], h.index))
        requested: dict[int, Any] = {}
        next_group = 0
        current = -1
        blocks: list[Block] = []
        for position, index in order:
            if position != current:
                while next_group < len(groups) and next_group <= position + ahead:
                    h = groups[next_group]
                    requested[next_group] = h.ref if isinstance(h, StoredBlock) else (
                        h.source.read_offer.remote(h.token, h.group))
                    next_group += 1
                blocks = []  # the group copied so far may go before the next arrives
                try:
                    blocks = ray.get(requested.pop(position), timeout=self.timeout)
                except ray.exceptions.RayError as exc:
                    raise MigrationError(f"a page block did not arrive: {exc}; the process "
                                         "stays at its source") from None
                current = position
            yield blocks[index]

    def discard(self, handles: tuple[Any, ...]) -> None:
        """Forget the offers among `handles` (the source's side; stored objects are freed
        when the last reference to them goes)."""
        tokens = {h.token for h in handles if isinstance(h, OfferedBlock)}
        with _offers_lock:
            for token in tokens:
                _offers.pop(token, None)


def transport_for(options: MigrationOptions, shared_plate: str) -> Transport:
    """The transport of `options`: files under the shared plate, or the object store."""
    if options.transfer is Transfer.PLATE:
        return PlateTransport(Path(shared_plate) / "migrations")
    return RayTransport(timeout=options.timeout)
