"""Open files that are events rather than data: an event counter (eventfd), a timer
(timerfd) and an interest list (epoll). Each is plain data in the descriptor table, so it
travels in the process image with what it holds: the counter, the timer's time left and
interval, the interest list with the descriptions it watches (the table pickles them
together, sharing intact).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tender_ray.abi.linux import Errno
from tender_ray.resources.open_file import POLLERR, POLLHUP, POLLIN, POLLOUT, FdTable, OpenFile

EVENTFD_MAX = (1 << 64) - 2
EPOLLONESHOT, EPOLLET = 1 << 30, 1 << 31
CLOCK_REALTIME = 0


def _error(errno: Errno, what: str) -> OSError:
    return OSError(int(errno), what)


# Told of every change of an eventfd's counter by the kernel whose threads share one
# (kernel/process_tree.py wakes those that wait on it, as for a pipe): one thread of a
# process writes the counter another waits on in read, poll or epoll. None: nobody waits.
counter_changed: Callable[[], None] | None = None


def _counter_changed() -> None:
    hook = counter_changed
    if hook is not None:
        hook()


class EventFd(OpenFile):
    """A 64-bit counter: writes add to it, a read takes it (or one, as a semaphore)."""

    kind = "eventfd"

    def __init__(self, initial: int, semaphore: bool, flags: int) -> None:
        super().__init__(flags | os.O_RDWR)
        self.count = initial
        self.semaphore = semaphore

    def read(self, length: int) -> bytes | None:
        if length < 8:
            raise _error(Errno.EINVAL, "an eventfd is read 8 bytes at a time")
        if self.count == 0:
            return None
        taken = 1 if self.semaphore else self.count
        self.count -= taken
        _counter_changed()  # (room for a writer that waits)
        return struct.pack("<Q", taken)

    def write(self, data: bytes) -> int | None:
        if len(data) < 8:
            raise _error(Errno.EINVAL, "an eventfd is written 8 bytes at a time")
        (value,) = struct.unpack("<Q", data[:8])
        if value > EVENTFD_MAX:
            raise _error(Errno.EINVAL, "0xffffffffffffffff cannot be added to an eventfd")
        if self.count + value > EVENTFD_MAX:
            return None  # it would overflow: wait for a read
        self.count += value
        if value:
            _counter_changed()
        return 8

    def readiness(self) -> int:
        return (POLLIN if self.count else 0) | (POLLOUT if self.count < EVENTFD_MAX else 0)


class TimerFd(OpenFile):
    """A timer on a clock: a read answers how many times it expired since the last read.
    `due` is on the clock's own time line (time.time() or time.monotonic()); an image
    carries a monotonic timer's time left instead, as a sleep's, and a realtime one's date."""

    kind = "timerfd"

    def __init__(self, clock: int, flags: int) -> None:
        super().__init__(flags | os.O_RDONLY)
        self.clock = clock
        self.due: float | None = None  # disarmed
        self.interval = 0.0
        self.expired = 0

    def now(self) -> float:
        return time.time() if self.clock == CLOCK_REALTIME else time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.due is not None and self.clock != CLOCK_REALTIME:
            state["due"] = self.due - time.monotonic()  # the time left travels
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.due is not None and self.clock != CLOCK_REALTIME:
            self.due += time.monotonic()

    def _advance(self) -> None:
        if self.due is None:
            return
        now = self.now()
        if now < self.due:
            return
        if self.interval > 0:
            n = 1 + int((now - self.due) / self.interval)
            self.expired += n
            self.due += n * self.interval
        else:
            self.expired += 1
            self.due = None

    def get(self) -> tuple[float, float]:
        """(time left, interval) in seconds; (0, interval) when disarmed."""
        self._advance()
        left = 0.0 if self.due is None else max(1e-9, self.due - self.now())
        return left, self.interval

    def set(self, value: float, interval: float, absolute: bool) -> tuple[float, float]:
        """Arm (value > 0) or disarm (value 0); what it was."""
        old = self.get()
        self.expired = 0
        if value <= 0:
            self.due, self.interval = None, 0.0
        else:
            self.due = value if absolute else self.now() + value
            self.interval = interval
        return old

    def read(self, length: int) -> bytes | None:
        if length < 8:
            raise _error(Errno.EINVAL, "a timerfd is read 8 bytes at a time")
        self._advance()
        if not self.expired:
            return None
        count, self.expired = self.expired, 0
        return struct.pack("<Q", count)

    def write(self, data: bytes) -> int | None:
        raise _error(Errno.EINVAL, "a timerfd cannot be written")

    def readiness(self) -> int:
        self._advance()
        return POLLIN if self.expired else 0

    def wake_after(self) -> float | None:
        return None if self.due is None else max(0.0, self.due - self.now())


@dataclass
class Interest:
    """One watched descriptor of an epoll set: the description, the events, the user data."""

    file: OpenFile
    events: int
    data: int
    seen: int = 0  # what it was ready for at the last look (EPOLLET reports what is new)
    held: int = 0  # how much it held to read then (bytes, a count, events)


def _held(file: OpenFile) -> int:
    """How much a description holds to be read: buffered bytes, a counter, expirations."""
    for name in ("pipe", "inbox"):
        buffer = getattr(file, name, None)
        if buffer is not None and hasattr(buffer, "data"):
            return len(buffer.data)
    if isinstance(file, EventFd):
        return file.count
    if isinstance(file, TimerFd):
        return file.expired
    held = getattr(file, "queue", getattr(file, "buffer", None))  # inotify, standard input
    return len(held) if held is not None else 0


class Epoll(OpenFile):
    """An epoll interest list, by descriptor number. Level-triggered, or with EPOLLET edge-
    triggered: an entry reports what it became ready for since its last look, and POLLIN
    again when it holds more to read than then (what arrived and was read between two looks
    is not seen); EPOLLONESHOT disables an entry once reported, until EPOLL_CTL_MOD."""

    kind = "epoll"

    def __init__(self, flags: int) -> None:
        super().__init__(flags | os.O_RDONLY)
        self.interest: dict[int, Interest] = {}

    def read(self, length: int) -> bytes | None:
        raise _error(Errno.EINVAL, "an epoll descriptor cannot be read")

    def write(self, data: bytes) -> int | None:
        raise _error(Errno.EINVAL, "an epoll descriptor cannot be written")

    def ready(self, table: FdTable, most: int) -> list[tuple[int, int]]:
        """Up to `most` (events, data) pairs ready now. A descriptor closed since it was
        added is dropped (Linux drops it once its description is gone)."""
        found = []
        for fd, item in list(self.interest.items()):
            entry = table.entries.get(fd)
            if entry is None or entry.file is not item.file:
                del self.interest[fd]
                continue
            events = item.file.readiness() & (item.events | POLLERR | POLLHUP)
            if item.events & EPOLLET:
                # New: a readiness it did not have at its last look, or more to read than
                # then (data arrived meanwhile, as Linux's wake-up on arrival reports).
                fill, last = _held(item.file), getattr(item, "held", 0)
                new = events & ~getattr(item, "seen", 0)
                if events & POLLIN and fill > last:
                    new |= POLLIN
                events, item.seen, item.held = new, events, fill
            if not events or not item.events & ~(EPOLLONESHOT | EPOLLET):
                continue
            found.append((events, item.data))
            if item.events & EPOLLONESHOT:
                item.events = EPOLLONESHOT  # disabled until EPOLL_CTL_MOD
            if len(found) == most:
                break
        return found

    def wake_after(self) -> float | None:
        times = [t for item in self.interest.values()
                 if (t := item.file.wake_after()) is not None]
        return min(times) if times else None

    def readiness(self) -> int:
        return 0  # an epoll set inside another is not offered (epoll_ctl refuses it)
