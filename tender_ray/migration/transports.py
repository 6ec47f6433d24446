"""Transports: how page blocks move between machines. Memory to memory (DSM: the object store
in the Ray layer, or references between machines of one process) or as files on a plate
directory every machine reaches (the NFS-like path the paper compares against)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class Transport(Protocol):
    """Moves page blocks between machines."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any: ...
    def get(self, handle: Any) -> npt.NDArray[np.uint8]: ...
    def discard(self, handles: tuple[Any, ...]) -> None: ...


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
