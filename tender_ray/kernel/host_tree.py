"""A machine's place in the host tree: the file service of the processes that started here,
the home side it serves their file calls with once they have moved on, and the links to the
homes of the processes that arrived (MOSIX's deputies, `resources/home_files.py`).

Which service a process's view uses: its home's files are this machine's own when it started
here, when no cluster links machines (one host), or when its home is on this Ray node and the
machine's `host_files` is `node` (one node, one file system: the short cut). Otherwise every
file call goes to the home, in large blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tender_ray.config import HostFiles
from tender_ray.resources.file_view import FileService, FileView, LocalFileService
from tender_ray.resources.home_files import (
    HomeFiles,
    HomeLink,
    HostTreeStatistics,
    NoHostFiles,
    RemoteFileService,
)


class HostTree:
    """One machine's host files (owned by the machine; `node` and `link` set by the Ray
    layer once, before processes arrive)."""

    def __init__(self, machine: str, mode: HostFiles = HostFiles.NODE) -> None:
        self.machine = machine
        self.mode = mode
        self.local: FileService = (NoHostFiles(machine) if mode is HostFiles.NONE
                                   else LocalFileService())
        self.home = HomeFiles(self.local)  # what this machine serves processes that left
        self.node = ""  # this machine's Ray node id ("": no Ray)
        self.link: Callable[[str], HomeLink] | None = None  # opens a link to a home by name
        self._lock = threading.Lock()
        self._remote: dict[str, RemoteFileService] = {}  # by home machine

    def service_for(self, view: FileView) -> FileService:
        """The file service a process with this view uses here."""
        if not view.home or view.home == self.machine or self.link is None:
            return self.local
        if self.mode is HostFiles.NODE and view.home_node and view.home_node == self.node:
            return self.local
        with self._lock:
            remote = self._remote.get(view.home)
            if remote is None:
                remote = self._remote[view.home] = RemoteFileService(self.link(view.home))
            return remote

    def statistics(self) -> HostTreeStatistics:
        with self._lock:
            remote = tuple(r.statistics() for r in self._remote.values())
        return HostTreeStatistics(self.home.statistics(), remote)
