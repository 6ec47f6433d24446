"""Transports: how page blocks move between machines. Memory to memory (DSM: the object store
in the Ray layer, or references between machines of one process) or as files on a plate
directory every machine reaches (the NFS-like path the paper compares against)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class Transport(Protocol):
    """Moves page blocks between machines."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any: ...
    def get(self, handle: Any) -> npt.NDArray[np.uint8]: ...
    def discard(self, handles: tuple[Any, ...]) -> None: ...


class StreamingTransport(Transport, Protocol):
    """A transport that moves a whole image's blocks at once: it may batch them, send the
    first ones ahead and let the destination fetch the rest while it copies (so a move
    larger than the transport's memory is streamed), and it says how large a block is."""

    block_pages: int

    def put_many(self, blocks: Sequence[npt.NDArray[np.uint8]]) -> tuple[Any, ...]: ...
    def get_many(self, handles: Sequence[Any]) -> Iterator[npt.NDArray[np.uint8]]: ...


def block_pages(transport: Transport, default: int) -> int:
    """Rows per page block for `transport`: its own size, or `default`."""
    return int(getattr(transport, "block_pages", default))


def put_blocks(transport: Transport,
               blocks: Sequence[npt.NDArray[np.uint8]]) -> tuple[Any, ...]:
    """Every block put into `transport`, one handle each, in order."""
    if hasattr(transport, "put_many"):
        handles: tuple[Any, ...] = transport.put_many(blocks)
        return handles
    return tuple(transport.put(b) for b in blocks)


def get_blocks(transport: Transport, handles: Sequence[Any]
               ) -> Iterator[npt.NDArray[np.uint8]]:
    """The blocks of `handles`, in order, one at a time: a caller that copies each before
    asking for the next keeps at most a few in memory."""
    if hasattr(transport, "get_many"):
        yield from transport.get_many(handles)
        return
    for handle in handles:
        yield transport.get(handle)


class LocalTransport:
    """Blocks passed by reference: for machines in one process (tests, the same-host case)."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        return block

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        return handle

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass


class PlateTransport:
    """Blocks as files on a plate directory every machine can reach (NFS-like sharing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        path = self.directory / f"block-{uuid.uuid4().hex}.pages"
        with open(path, "wb") as f:
            f.write(np.ascontiguousarray(block).data)
            f.flush()
            os.fsync(f.fileno())  # written through, as a file server would have it
        return (str(path), block.shape[0])

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        path, rows = handle
        data = np.fromfile(path, dtype=np.uint8)
        return data.reshape(rows, -1) if rows else data

    def discard(self, handles: tuple[Any, ...]) -> None:
        for handle in handles:
            if isinstance(handle, tuple):
                Path(handle[0]).unlink(missing_ok=True)
