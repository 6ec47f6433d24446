"""How a migration is asked to go: the transfer path, reuse of held resources, which resources
move, and how long the transform may take."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Transfer(str, enum.Enum):
    DSM = "dsm"  # page blocks through the object store, memory to memory
    PLATE = "plate"  # page blocks as files on a shared plate directory


class Resources(str, enum.Enum):
    NEEDED = "needed"  # move only what must move: text pages from memory, not program/plate
    ALL = "all"  # move the program image and plate contents too; reload text from the plate


@dataclass(frozen=True)
class MigrationOptions:
    transfer: Transfer = Transfer.DSM
    reuse: bool = True
    resources: Resources = Resources.NEEDED
    timeout: float = 120.0  # seconds for the whole transform call
