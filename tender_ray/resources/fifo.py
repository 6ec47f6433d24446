"""Named pipes (FIFOs): the name is a host file (made by `mknod` through the file service),
the data the kernel's own pipe buffer, one per FIFO and machine, shared by every end the
machine's processes open — as Linux keeps one pipe per FIFO inode. Data never goes through
the host FIFO: opening that would block the machine's thread, and a host fd cannot travel.

Opening follows Linux's `fifo_open`: a reader waits for a writer and a writer for a reader
unless O_NONBLOCK (a lone non-blocking writer gets ENXIO), O_RDWR never waits. A process
waiting in `open` is counted as the partner it will be, so the other side's open goes on.

An end travels with its process only when that process holds every end of its FIFO: the
buffer (and what is in it) goes in the image and the FIFO joins the destination's. An end
shared with another process of the machine is refused with a reason: the two would lose
each other.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tender_ray.abi.linux import Errno
from tender_ray.errors import MigrationError
from tender_ray.resources.file_view import FileService, FileStat
from tender_ray.resources.open_file import POLLIN, POLLOUT, PipeBuffer, PipeEnd
from tender_ray.resources.process import Process, RunState

RETRY = 0.005  # seconds between two looks of a waiting open, read or write at its partner
FifoKey = tuple[str, int, int]  # the host tree's node, the FIFO's device and inode
_LOCK = threading.Lock()  # a FIFO's counts and data are shared by the machine's computations
_WAITING_STATES = frozenset({RunState.RUNNABLE, RunState.RUNNING, RunState.FALLING_ASLEEP,
                             RunState.SLEEPING})


@dataclass
class _Waiter:
    """A process inside a blocking `open` of the FIFO, as the partner it will be."""

    process: weakref.ReferenceType[Process]
    reader: bool
    call: int  # its system call count at the open: a re-issue comes next
    seen: int  # the partner side's opens counted when it began to wait

    def present(self) -> bool:
        """Still inside that open: alive here, and no call since (a signal that ended the
        wait, or a move away, ends its place as a partner, as Linux's open undoes it)."""
        p = self.process()
        return (p is not None and p.state in _WAITING_STATES
                and sum(p.accounting.syscalls.values()) == self.call)


@dataclass(eq=False)
class FifoBuffer(PipeBuffer):
    """A FIFO's pipe: the buffer, its open ends by the process holding them, and the
    processes waiting in `open` for the other side. One object per FIFO: compared and
    hashed by identity."""

    __hash__ = object.__hash__

    key: FifoKey = ("", 0, 0)
    name: str = ""  # its guest path, for messages
    holders: Counter[int] = field(default_factory=Counter)  # pid -> ends it holds
    reader_opens: int = 0  # opens for reading ever made (a waiting writer's wake-up)
    writer_opens: int = 0
    waiting: dict[int, _Waiter] = field(default_factory=dict)  # pid -> its blocked open
    host: str = ""  # its host path when last opened, and what stat said of it then
    stat: FileStat | None = None

    def inode(self, service: FileService) -> FileStat:
        """What fstat on an end answers: the FIFO file's own stat (its name may be gone:
        then as it was last seen), with nothing in it, as Linux shows a FIFO."""
        try:
            st = service.lstat(self.host)
            if self.stat is None or (st.dev, st.ino) == (self.stat.dev, self.stat.ino):
                self.stat = st
        except OSError:
            pass
        if self.stat is None:
            raise OSError(int(Errno.EBADF), f"{self.name}: the FIFO was never seen")
        return self.stat

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["waiting"] = {}  # processes of the machine it leaves
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _ARRIVED.add(self)  # joins the first registry that asks for its FIFO

    def partners(self, reader: bool) -> int:
        """Ends of one side, counting processes waiting in `open` to be one."""
        waiting = sum(1 for w in self.waiting.values() if w.reader == reader and w.present())
        return (self.readers if reader else self.writers) + waiting

    def others(self, pid: int) -> list[int]:
        """Other processes holding an end or waiting to."""
        return sorted({q for q, n in self.holders.items() if n and q != pid}
                      | {q for q, w in self.waiting.items() if q != pid and w.present()})


_ARRIVED: weakref.WeakSet[FifoBuffer] = weakref.WeakSet()
_REGISTRIES: weakref.WeakKeyDictionary[object, FifoRegistry] = weakref.WeakKeyDictionary()


class FifoRegistry:
    """One machine's FIFOs: the buffer of each FIFO an end is open on."""

    def __init__(self) -> None:
        self._fifos: dict[FifoKey, FifoBuffer] = {}

    def buffer(self, key: FifoKey, name: str, own: list[FifoBuffer]) -> FifoBuffer:
        """The FIFO's buffer here: the one open already, one the opener brought along
        (`own`) or that arrived with another process, or a new one."""
        with _LOCK:
            return self._buffer(key, name, own)

    def _buffer(self, key: FifoKey, name: str, own: list[FifoBuffer]) -> FifoBuffer:
        for k, b in list(self._fifos.items()):  # a FIFO nobody holds or waits for is gone
            if not b.readers and not b.writers and not any(
                    w.present() for w in b.waiting.values()):
                del self._fifos[k]
        found = self._fifos.get(key)
        if found is None:
            found = next((b for b in own if b.key == key), None) or next(
                (b for b in list(_ARRIVED) if b.key == key), None)
            if found is not None:
                _ARRIVED.discard(found)
            else:
                found = FifoBuffer(key=key, name=name)
            self._fifos[key] = found
        return found


def registry_of(kernel: object) -> FifoRegistry:
    """The FIFOs of the machine whose system calls `kernel` serves."""
    with _LOCK:
        found = _REGISTRIES.get(kernel)
        if found is None:
            found = _REGISTRIES[kernel] = FifoRegistry()
        return found


class MustWait(Exception):
    """The open waits for the FIFO's other side: the call is issued again later."""


def open_end(fifo: FifoBuffer, p: Process, flags: int, call: int) -> FifoEnd:
    """Open the FIFO as Linux does: for reading, writing or both (`flags`' access mode)."""
    with _LOCK:
        access = flags & os.O_ACCMODE
        if access == os.O_RDWR:
            return FifoEnd(fifo, p.pid, flags)
        reader = access == os.O_RDONLY
        earlier = fifo.waiting.pop(p.pid, None)
        counter = fifo.writer_opens if reader else fifo.reader_opens
        if earlier is not None and (earlier.call + 1 != call or earlier.reader != reader):
            earlier = None  # another call came between: a new open
        if reader:
            ready = (flags & os.O_NONBLOCK or fifo.writers > 0
                     or (earlier is not None and counter != earlier.seen))
        else:
            ready = fifo.partners(reader=True) > 0 or (
                earlier is not None and counter != earlier.seen)
            if not ready and flags & os.O_NONBLOCK:
                raise OSError(int(Errno.ENXIO), f"{fifo.name}: a FIFO with no reader cannot "
                              "be opened for writing without waiting")
        if not ready:
            fifo.waiting[p.pid] = _Waiter(weakref.ref(p), reader, call,
                                          earlier.seen if earlier is not None else counter)
            raise MustWait
        return FifoEnd(fifo, p.pid, flags)


class FifoEnd(PipeEnd):
    """An open FIFO: a pipe end whose partner may be in another process of the machine (so a
    wait looks again every few milliseconds), or both ends at once (O_RDWR)."""

    kind = "fifo"

    def __init__(self, fifo: FifoBuffer, pid: int, flags: int) -> None:
        access = flags & os.O_ACCMODE
        self.both = access == os.O_RDWR
        super().__init__(fifo, access == os.O_WRONLY, flags & ~os.O_ACCMODE)
        self.flags = flags  # PipeEnd's access mode is one way; a FIFO may be O_RDWR
        self.fifo = fifo
        self.pid = pid
        if self.both:
            fifo.writers += 1
            fifo.writer_opens += 1
        if self.both or not self.write_end:
            fifo.reader_opens += 1
        if self.write_end:
            fifo.writer_opens += 1
        fifo.holders[pid] += 1

    def __getstate__(self) -> dict[str, Any]:
        with _LOCK:
            others = self.fifo.others(self.pid)
        if others:
            raise MigrationError(
                f"process {self.pid} shares the FIFO {self.fifo.name} with process"
                f"{'es' if len(others) > 1 else ''} {', '.join(map(str, others))} of this "
                "machine: a FIFO joins processes of one machine, so it moves only once the "
                "others have closed it")
        return dict(self.__dict__)

    def read(self, length: int) -> bytes | None:
        if self.write_end and not self.both:
            raise OSError(int(Errno.EBADF), "a FIFO opened for writing cannot be read")
        with _LOCK:
            if not self.pipe.data:  # a writer waiting in open is one already, as in Linux
                return b"" if self.fifo.partners(reader=False) == 0 else None
            return self.pipe.take(length)

    def write(self, data: bytes) -> int | None:
        if not self.write_end and not self.both:
            raise OSError(int(Errno.EBADF), "a FIFO opened for reading cannot be written")
        with _LOCK:
            if self.fifo.partners(reader=True) == 0:  # a reader waiting in open counts
                raise OSError(int(Errno.EPIPE), f"every reader of {self.fifo.name} is gone")
            return self.pipe.put(data)

    def readiness(self) -> int:
        if not self.both:
            return super().readiness()
        # Its own writer keeps it open: never a hang-up, never an error.
        return (POLLIN if self.pipe.data else 0) | (
            POLLOUT if len(self.pipe.data) < self.pipe.capacity else 0)

    def wake_after(self) -> float | None:
        return RETRY  # the partner may be another process: look again

    def release(self) -> None:
        with _LOCK:
            if self.both:
                self.pipe.readers -= 1
                self.pipe.writers -= 1
            else:
                super().release()
            self.fifo.holders[self.pid] -= 1
            if self.fifo.holders[self.pid] <= 0:
                del self.fifo.holders[self.pid]
