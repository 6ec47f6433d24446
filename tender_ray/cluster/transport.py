"""DSM over Ray's object store, and the choice of transport a migration asks for: the object
store (memory to memory) or files on the plate every machine shares (the NFS-like path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray

from tender_ray.migration.options import MigrationOptions, Transfer
from tender_ray.migration.transports import PlateTransport, Transport


class RayTransport:
    """DSM over the object store: a page block is one object; same-node reads are zero-copy."""

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        return ray.put(block)

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        block: npt.NDArray[np.uint8] = ray.get(handle)
        return block

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass  # objects are freed when the last reference to them goes


def transport_for(options: MigrationOptions, shared_plate: str) -> Transport:
    """The transport of `options`: files under the shared plate, or the object store."""
    if options.transfer is Transfer.PLATE:
        return PlateTransport(Path(shared_plate) / "migrations")
    return RayTransport()
