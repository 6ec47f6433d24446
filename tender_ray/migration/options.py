"""How a migration is asked to go: the transfer path, reuse of held resources, which resources
move, how long the transform may take, and its mode (stop-and-copy, pre-copy, or chosen per
process)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Transfer(str, enum.Enum):
    DSM = "dsm"  # page blocks through the object store, memory to memory
    PLATE = "plate"  # page blocks as files on a shared plate directory


class Resources(str, enum.Enum):
    NEEDED = "needed"  # move only what must move: text pages from memory, not program/plate
    ALL = "all"  # move the program image and plate contents too; reload text from the plate


class MigrationMode(str, enum.Enum):
    STOP = "stop"  # freeze, copy every page, resume at the destination
    PRECOPY = "precopy"  # copy while it runs, rounds of the pages written meanwhile, then freeze
    AUTO = "auto"  # per process: by its resident size and the dirty rate measured so far


MODE_NAMES = tuple(m.value for m in MigrationMode)


def migration_mode(name: str) -> MigrationMode:
    """The mode called `name`; ValueError saying what is offered otherwise (post-copy is
    named as not available yet, never mapped to another mode)."""
    try:
        return MigrationMode(name)
    except ValueError:
        pass
    if name == "postcopy":
        raise ValueError("migration mode 'postcopy' is not available yet; use "
                         + ", ".join(MODE_NAMES))
    raise ValueError(f"unknown migration mode {name!r}; use one of " + ", ".join(MODE_NAMES))


@dataclass(frozen=True)
class MigrationOptions:
    transfer: Transfer = Transfer.DSM
    reuse: bool = True
    resources: Resources = Resources.NEEDED
    timeout: float = 120.0  # seconds for the whole transform call
    mode: MigrationMode = MigrationMode.STOP
