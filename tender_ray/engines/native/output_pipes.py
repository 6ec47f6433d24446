"""Output pipes: a native guest's standard output or error held as a real host pipe whose
write end sits at the guest's own descriptor number and whose read end the machine drains
into the process's stream, so that its writes of at most PIPE_BUF bytes go straight to the
host kernel (`narrowing.narrowing_filter`'s `writes`) while the stream stays the
machine's: the same bytes in the same order, held in the process's image at every move.

Why it is built this way:

* **One order.** Every reader of the pipe holds the machine's scheduler lock (the `OutputSink`
  lock) from its read to its append, so the drain thread, a drain at a stop and a drain
  before a mediated write can never put two pieces of the pipe out of order. The machine
  drains the pipe before anything that orders against the stream: a mediated write to the
  same stream (a `writev`, a write longer than PIPE_BUF, a child's write to its root's
  stream, a write through a description that is not direct) drains first, and so does the
  end of every run (`DirectFiles.drain_outputs`, from `NativeCpu.end_run`): a guest that is
  not running has nothing in its pipes, so a freeze, a checkpoint, an exit and a reap read
  the whole stream. A direct write has reached the pipe before the call returns, so a stop
  right after it finds its bytes there.
* **No deadlock on a full pipe.** A drain thread per pipe empties it as bytes arrive, as
  far as the stream has room (`OUTPUT_LIMIT` once its owner follows it). When the stream is
  full the thread holds back and the pipe fills; a writer blocked in the host kernel holds no
  CPU time, so its quantum would never end: the thread then ends the run (`preempt`), the
  blocked write is cut off before it wrote anything (it is atomic: at most PIPE_BUF bytes)
  and the machine serves that very call as a mediated write (`DirectFiles.settle`), which
  drains the pipe and puts the process to sleep until its owner takes output, as before.
  A stream therefore holds at most OUTPUT_LIMIT plus one pipe's capacity.
* **The reader gone.** When the stream's reader has gone (`Machine.close_output`) the
  thread drops what arrives (as a closed pipe does) and ends the run; at the next run the
  number is no longer direct (`eligible_output`), so the next write is mediated and fails
  with EPIPE and SIGPIPE through the machine's signals, as before. A direct write the host
  refused (EPIPE) is served by the machine again, not shown to the guest.
* **What stays the machine's.** `fstat`, `lseek`, `ioctl` (isatty), `fcntl` and reads on the
  number are still mediated (only `write` passes), so the guest sees the stream the machine
  describes (a pipe, a file, a terminal). A description with O_NONBLOCK stays mediated.

Where it is off: guests of several host threads (as direct files, `DirectFiles.retire`),
processes whose output goes to another's streams (a child writing to its tree root's:
`Machine.stream_sink` gives them no sink; the root's own pipe is drained before each of
their mediated writes, so their order holds), and a second description of one stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import termios
import threading
from collections.abc import Callable
from typing import Final, Protocol

from tender_ray.resources.open_file import OpenFile, OutputStream

ENABLED = True  # False: writes to the standard streams stay mediated (`bench io --no-output-pipes`)
CAPACITY: Final = 1 << 18  # the host pipe's size: what a stream may hold beyond its bound
CHUNK: Final = 1 << 20  # the most one read of the pipe takes
PIPE_BUF: Final = 4096
RECHECK_S: Final = 0.02  # how often a thread held back by a full stream looks again


class OutputSink(Protocol):
    """The machine's side of one process's own standard streams."""

    @property
    def lock(self) -> contextlib.AbstractContextManager[object]: ...

    def room(self, stream: int) -> int:
        """Bytes stream `stream` (1, 2) takes now without waiting; -1 when its reader has
        gone (caller holds `lock`)."""
        ...

    def append(self, stream: int, data: bytes) -> None:
        """Add what the process wrote to the stream (caller holds `lock`)."""
        ...


def eligible_output(file: OpenFile, sink: OutputSink | None) -> bool:
    """A description that can be a host pipe: a blocking standard stream of a process
    whose streams are its own, its reader still there (caller holds the sink's lock)."""
    return (ENABLED and sink is not None and isinstance(file, OutputStream)
            and file.stream in (1, 2)
            and not file.flags & os.O_NONBLOCK and sink.room(file.stream) >= 0)


class OutputPipe:
    """One host pipe for one standard stream of one guest host process, and its drain
    thread. `write_end` is the machine's until the guest has opened its own (`installed`)."""

    def __init__(self, sink: OutputSink, stream: int, description: OpenFile,
                 preempt: Callable[[], None]) -> None:
        self.sink, self.stream, self.description = sink, stream, description
        self._preempt = preempt
        self.read_end, self.write_end = os.pipe2(os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # (a user over its pipe quota keeps less)
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, CAPACITY)
        self.capacity = fcntl.fcntl(self.write_end, fcntl.F_GETPIPE_SZ)
        os.set_blocking(self.read_end, False)
        self.closed = False
        self.held_back = False  # the thread waits for room in the stream, not for bytes
        self.dropped = 0  # bytes that arrived after the stream's reader had gone
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"tender-output-{stream}")

    def installed(self) -> None:
        """The guest holds its write end: the machine lets go of its own and drains."""
        os.close(self.write_end)
        self.write_end = -1
        self._thread.start()

    def drain(self, limit: int | None = None) -> bool:
        """Move what the pipe holds into the stream (at most `limit` bytes); False at its
        end (no writer is left). Caller holds the sink's lock. A thread held back by a full
        stream looks again (the owner may just have taken output)."""
        if self.closed:
            return False
        if self.held_back and limit is None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"k")
        left = CHUNK if limit is None else limit
        while limit is None or left > 0:
            try:
                data = os.read(self.read_end, min(CHUNK, left) if limit is not None else CHUNK)
            except BlockingIOError:
                return True
            if not data:
                return False
            if self.sink.room(self.stream) < 0:
                self.dropped += len(data)  # its reader has gone: as a closed pipe drops it
            else:
                self.sink.append(self.stream, data)
            left -= len(data)
        return True

    def close(self) -> None:
        """Drain what is left and stop the thread (caller holds the sink's lock)."""
        if self.closed:
            return
        self.drain()
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")  # the thread closes the rest
            return
        for fd in (self.read_end, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _held(self) -> int:
        """Bytes waiting in the pipe."""
        got = bytearray(4)
        fcntl.ioctl(self.read_end, termios.FIONREAD, got)
        return int.from_bytes(got, "little")

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.read_end, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            if self.held_back:  # the stream is full: look again when woken or later,
                ready = select.select([self._wake_r], [], [], RECHECK_S)[0]  # not per byte
            else:
                ready = [fd for fd, _ in poller.poll()]
            if self._wake_r in ready:  # `_finish`, or a drain while held back
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            with self.sink.lock:
                if self.closed:
                    break
                room = self.sink.room(self.stream)
                if room < 0:  # the reader has gone: drop, and end the run so the next
                    self.held_back = False  # one finds the number mediated (EPIPE then)
                    alive = self.drain()
                    self._preempt()
                elif room == 0:
                    self.held_back = True
                    if self._held() > self.capacity - PIPE_BUF:
                        self._preempt()  # a writer may be blocked: the machine serves it
                    continue
                else:
                    self.held_back = False
                    alive = self.drain(room)
                if not alive:
                    self.closed = True
                    break
        for fd in (self.read_end, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
