"""Plate: persistent storage, a directory of named byte objects.

A machine's plate holds the program images it has loaded (named by content digest, so an
image is stored once however often it runs) and, for the plate transfer path, region files.
Writes go to a temporary name and are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class PlateStatistics:
    path: str
    objects: int
    bytes: int
    writes: int
    reads: int


class Plate:
    """A directory used as persistent storage. Names are relative paths ('programs/<digest>')."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._writes = 0
        self._reads = 0

    def _path(self, name: str) -> Path:
        if not _NAME.match(name) or ".." in name.split("/"):
            raise ValueError(f"bad plate object name {name!r}")
        return self.root / name

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def write(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with self._lock:
            self._writes += 1

    def read(self, name: str) -> bytes:
        data = self._path(name).read_bytes()
        with self._lock:
            self._reads += 1
        return data

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    @staticmethod
    def program_name(digest: str) -> str:
        return f"programs/{digest}"

    def store_program(self, image: bytes, digest: str) -> str:
        """Keep a program image once; its plate name."""
        name = self.program_name(digest)
        if not self.exists(name):
            self.write(name, image)
        return name

    def statistics(self) -> PlateStatistics:
        files = [p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
        with self._lock:
            return PlateStatistics(str(self.root), len(files), sum(p.stat().st_size for p in files),
                                   self._writes, self._reads)
