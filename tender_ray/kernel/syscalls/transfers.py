"""Moving data between descriptors without passing it through the guest's buffers (sendfile,
copy_file_range, splice, tee), and vectored reads and writes at an offset (preadv, pwritev and
their -2 forms). Each moves at most one block per call, as the calls may; a move that would
have to wait on its destination waits before it takes anything from its source, so no byte is
lost when the process is interrupted or moved between the two."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls.base import (
    Handler,
    errno_call,
    iovecs,
    restart_call,
    scatter,
    signed,
    wait_until_ready,
)
from tender_ray.kernel.syscalls.files import MAX_IO, _write_out
from tender_ray.resources.image_file import ImageFile
from tender_ray.resources.open_file import HostFile, OpenFile, OutputStream, PipeEnd
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "files"
SPLICE_F_NONBLOCK = 2


def _offset(p: Process, addr: int) -> int | None:
    if not addr:
        return None
    assert p.space is not None
    (value,) = struct.unpack("<q", p.space.read(addr, 8))
    if value < 0:
        raise OSError(int(Errno.EINVAL), "a negative offset")
    return int(value)


def _room(sc: SystemCalls, p: Process, file: OpenFile) -> int:
    """Bytes the destination takes now without waiting (a pipe's free space, a standard
    output's; else a block). A closed one says a block: the write then finds it closed."""
    if isinstance(file, PipeEnd) and file.pipe.readers:
        return max(0, file.pipe.capacity - len(file.pipe.data))
    if isinstance(file, OutputStream):
        try:
            return sc.services.output_room(p, file.stream)
        except OSError:
            return MAX_IO
    return MAX_IO


def _wait_for_room(sc: SystemCalls, p: Process, nr: int, dst: OpenFile) -> SyscallOutcome:
    if isinstance(dst, OutputStream):  # woken by the owner's next take
        sc.services.wait_for_output(p, dst.stream, 1)
        return restart_call(p, nr)
    return wait_until_ready(sc, p, nr, None)


def _move(sc: SystemCalls, p: Process, nr: int, fd_in: int, off_in: int, fd_out: int,
          off_out: int, count: int, nonblock: bool = False) -> SyscallOutcome:
    src, dst = p.files.get(fd_in), p.files.get(fd_out)
    if not src.readable or isinstance(src, OutputStream) or not dst.writable:
        return SyscallOutcome(-Errno.EBADF)
    at_in, at_out = _offset(p, off_in), _offset(p, off_out)
    room = _room(sc, p, dst)
    if room == 0:  # wait for the reader before taking anything from the source
        if nonblock or dst.flags & os.O_NONBLOCK:
            return SyscallOutcome(-Errno.EAGAIN)
        return _wait_for_room(sc, p, nr, dst)
    count = min(count, room, MAX_IO)
    data = src.pread(count, at_in) if at_in is not None else src.read(count)
    if data is None:
        if nonblock or src.flags & os.O_NONBLOCK:
            return SyscallOutcome(-Errno.EAGAIN)
        return wait_until_ready(sc, p, nr, src.wake_after())
    if not data:
        return SyscallOutcome(0)
    outcome = _write_out(sc, p, fd_out, data, nr, offset=at_out)
    assert p.space is not None
    written = outcome.result if outcome.result is not None and outcome.result >= 0 else 0
    if at_in is not None:
        p.space.write(off_in, struct.pack("<q", at_in + written))
    if at_out is not None:
        p.space.write(off_out, struct.pack("<q", at_out + written))
    return outcome


def _regular(file: OpenFile) -> bool:
    return isinstance(file, HostFile | ImageFile)


@errno_call
def sendfile(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _move(sc, p, 40, a[1], a[2], a[0], 0, a[3])


@errno_call
def copy_file_range(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[5]:
        return SyscallOutcome(-Errno.EINVAL)  # no flags are defined
    if not (_regular(p.files.get(a[0])) and _regular(p.files.get(a[2]))):
        return SyscallOutcome(-Errno.EINVAL)
    return _move(sc, p, 326, a[0], a[1], a[2], a[3], a[4])


@errno_call
def splice(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    src, dst = p.files.get(a[0]), p.files.get(a[2])
    if not isinstance(src, PipeEnd) and not isinstance(dst, PipeEnd):
        return SyscallOutcome(-Errno.EINVAL)  # one end must be a pipe
    if (a[1] and isinstance(src, PipeEnd)) or (a[3] and isinstance(dst, PipeEnd)):
        return SyscallOutcome(-Errno.ESPIPE)
    return _move(sc, p, 275, a[0], a[1], a[2], a[3], a[4], bool(a[5] & SPLICE_F_NONBLOCK))


@errno_call
def tee(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    src, dst = p.files.get(a[0]), p.files.get(a[1])
    if not isinstance(src, PipeEnd) or not isinstance(dst, PipeEnd) or src.pipe is dst.pipe:
        return SyscallOutcome(-Errno.EINVAL)
    if src.write_end or not dst.write_end:
        return SyscallOutcome(-Errno.EBADF)
    nonblock = bool(a[3] & SPLICE_F_NONBLOCK)
    room = _room(sc, p, dst)
    if not src.pipe.data or room == 0:
        if not src.pipe.data and src.pipe.writers == 0:
            return SyscallOutcome(0)
        if nonblock:
            return SyscallOutcome(-Errno.EAGAIN)
        return wait_until_ready(sc, p, 276, None)
    data = bytes(src.pipe.data[:min(a[2], room, MAX_IO)])  # copied, not taken
    return _write_out(sc, p, a[1], data, 276)


@errno_call
def preadv(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    vectors = iovecs(p, a[1], a[2])
    offset = signed(a[3])
    file = p.files.get(a[0])
    if offset == -1:  # preadv2's "the file's own offset"
        data = file.read(min(sum(n for _, n in vectors), MAX_IO)) or b""
    else:
        data = file.pread(min(sum(n for _, n in vectors), MAX_IO), offset)
    return scatter(p, vectors, data)


@errno_call
def pwritev(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    data = b"".join(p.space.read(base, n) for base, n in iovecs(p, a[1], a[2]))
    offset = signed(a[3])
    return _write_out(sc, p, a[0], data, 296, offset=None if offset == -1 else offset)


HANDLERS: dict[str, Handler] = {
    "sendfile": sendfile, "copy_file_range": copy_file_range, "splice": splice, "tee": tee,
    "preadv": preadv, "pwritev": pwritev, "preadv2": preadv, "pwritev2": pwritev,
}
