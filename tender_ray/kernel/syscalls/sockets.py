"""The sockets a Tender process may have: AF_UNIX stream pairs inside the process
(`socketpair`, what event loops make their wake-up channel of), with send/recv, sendmsg/
recvmsg, shutdown, socket options and names. Both ends are descriptions in its table, so
what is in flight travels with it. Sockets to anything else are not offered (ENOSYS)."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel.syscalls.base import (
    O_CLOEXEC,
    Handler,
    errno_call,
    file_of,
    iovecs,
    wait_until_ready,
)
from tender_ray.kernel.syscalls.files import MAX_IO, _write_out
from tender_ray.resources.open_file import PipeBuffer, SocketEnd
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "network"

AF_UNIX, SOCK_STREAM = 1, 1
SOCK_NONBLOCK, SOCK_CLOEXEC = os.O_NONBLOCK, O_CLOEXEC
MSG_PEEK, MSG_DONTWAIT, MSG_NOSIGNAL, MSG_WAITALL = 0x2, 0x40, 0x4000, 0x100
SOL_SOCKET = 1
SO_TYPE, SO_ERROR, SO_SNDBUF, SO_RCVBUF, SO_DOMAIN, SO_ACCEPTCONN = 3, 4, 7, 8, 39, 30
UNIX_BUFFER = 212_992  # net.core.wmem_default: what a unix stream socket buffers
_MSGHDR = struct.Struct("<QI4xQQQQi4x")  # struct msghdr on x86-64


def _socket(p: Process, fd: int) -> SocketEnd:
    return file_of(p, fd, SocketEnd, Errno.ENOTSOCK, "a socket")


@errno_call
def socketpair(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    domain, kind = a[0] & 0xFFFFFFFF, a[1] & 0xFFFFFFFF
    flags = kind & (SOCK_NONBLOCK | SOCK_CLOEXEC)
    if domain != AF_UNIX or kind & ~(SOCK_NONBLOCK | SOCK_CLOEXEC) != SOCK_STREAM:
        p.accounting.unsupported[f"socketpair(domain {domain}, type {kind})"] += 1
        return SyscallOutcome(-Errno.EOPNOTSUPP if domain == AF_UNIX else -Errno.EAFNOSUPPORT)
    one, two = PipeBuffer(capacity=UNIX_BUFFER), PipeBuffer(capacity=UNIX_BUFFER)
    cloexec = bool(flags & SOCK_CLOEXEC)
    first = p.files.install(SocketEnd(one, two, flags & SOCK_NONBLOCK), cloexec=cloexec)
    second = p.files.install(SocketEnd(two, one, flags & SOCK_NONBLOCK), cloexec=cloexec)
    assert p.space is not None
    p.space.write(a[3], struct.pack("<ii", first, second))
    return SyscallOutcome(0)


def _send(sc: SystemCalls, p: Process, fd: int, data: bytes, flags: int,
          nr: int) -> SyscallOutcome:
    sock = _socket(p, fd)
    if flags & MSG_DONTWAIT or flags & MSG_NOSIGNAL:
        try:
            written = sock.write(data)
        except OSError as e:
            if e.errno == Errno.EPIPE and flags & MSG_NOSIGNAL:
                return SyscallOutcome(-Errno.EPIPE)  # asked for no SIGPIPE
            raise
        if written is None:
            if flags & MSG_DONTWAIT or sock.flags & os.O_NONBLOCK:
                return SyscallOutcome(-Errno.EAGAIN)
            return wait_until_ready(sc, p, nr, None)
        return SyscallOutcome(written)
    return _write_out(sc, p, fd, data, nr)


def _receive(sc: SystemCalls, p: Process, fd: int, length: int, flags: int,
             nr: int) -> tuple[bytes | None, SyscallOutcome | None]:
    sock = _socket(p, fd)
    length = min(length, MAX_IO)
    if flags & MSG_PEEK:
        data: bytes | None = bytes(sock.inbox.data[:length])
        if not data and sock.inbox.writers and not sock.shut_rd:
            data = None
    else:
        data = sock.read(length)
    if data is None:
        if flags & MSG_DONTWAIT or sock.flags & os.O_NONBLOCK:
            return None, SyscallOutcome(-Errno.EAGAIN)
        return None, wait_until_ready(sc, p, nr, None)
    return data, None


@errno_call
def sendto(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[4]:
        _socket(p, a[0])
        return SyscallOutcome(-Errno.EISCONN)  # a pair is connected: no address
    assert p.space is not None
    return _send(sc, p, a[0], p.space.read(a[1], min(a[2], MAX_IO)), a[3], 44)


@errno_call
def recvfrom(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    data, wait = _receive(sc, p, a[0], a[2], a[3], 45)
    if wait is not None:
        return wait
    assert p.space is not None and data is not None
    p.space.write(a[1], data)
    if a[4] and a[5]:
        p.space.write(a[5], struct.pack("<I", 0))  # the peer has no name
    return SyscallOutcome(len(data))


@errno_call
def sendmsg(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    name, _, iov, count, control, _, _ = _MSGHDR.unpack(p.space.read(a[1], _MSGHDR.size))
    if control:
        p.accounting.unsupported["sendmsg with control data"] += 1
        return SyscallOutcome(-Errno.EINVAL)
    if name:
        return SyscallOutcome(-Errno.EISCONN)
    data = b"".join(p.space.read(base, n) for base, n in iovecs(p, iov, count))
    return _send(sc, p, a[0], data[:MAX_IO], a[2], 46)


@errno_call
def recvmsg(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    assert p.space is not None
    _, _, iov, count, _, _, _ = _MSGHDR.unpack(p.space.read(a[1], _MSGHDR.size))
    vectors = iovecs(p, iov, count)
    data, wait = _receive(sc, p, a[0], sum(n for _, n in vectors), a[2], 47)
    if wait is not None:
        return wait
    assert data is not None
    done = 0
    for base, n in vectors:
        p.space.write(base, data[done:done + n])
        done += min(n, len(data) - done)
    # No name, no control data, no flags: msg_namelen, msg_controllen, msg_flags all 0.
    p.space.write(a[1] + 8, struct.pack("<I", 0))
    p.space.write(a[1] + 40, struct.pack("<Q", 0))
    p.space.write(a[1] + 48, struct.pack("<i", 0))
    return SyscallOutcome(len(data))


@errno_call
def shutdown(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    how = a[1] & 0xFFFFFFFF
    if how > 2:
        return SyscallOutcome(-Errno.EINVAL)
    _socket(p, a[0]).shutdown(how in (0, 2), how in (1, 2))
    return SyscallOutcome(0)


@errno_call
def getsockopt(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    sock = _socket(p, a[0])
    level, option = a[1] & 0xFFFFFFFF, a[2] & 0xFFFFFFFF
    values = {SO_TYPE: SOCK_STREAM, SO_ERROR: 0, SO_DOMAIN: AF_UNIX, SO_ACCEPTCONN: 0,
              SO_SNDBUF: sock.outbox.capacity, SO_RCVBUF: sock.inbox.capacity}
    if level != SOL_SOCKET or option not in values:
        p.accounting.unsupported[f"getsockopt({level}, {option})"] += 1
        return SyscallOutcome(-Errno.ENOPROTOOPT)
    assert p.space is not None
    p.space.write(a[3], struct.pack("<i", values[option]))
    p.space.write(a[4], struct.pack("<I", 4))
    return SyscallOutcome(0)


@errno_call
def setsockopt(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    sock = _socket(p, a[0])
    level, option = a[1] & 0xFFFFFFFF, a[2] & 0xFFFFFFFF
    if level == SOL_SOCKET and option in (SO_SNDBUF, SO_RCVBUF):
        assert p.space is not None
        (size,) = struct.unpack("<i", p.space.read(a[3], 4))
        # Linux doubles what it is given, within its limits.
        buffer = sock.outbox if option == SO_SNDBUF else sock.inbox
        buffer.capacity = max(4608, min(2 * size, 2 * UNIX_BUFFER), len(buffer.data))
        return SyscallOutcome(0)
    p.accounting.unsupported[f"setsockopt({level}, {option})"] += 1
    return SyscallOutcome(-Errno.ENOPROTOOPT)


def _name(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    _socket(p, a[0])
    assert p.space is not None
    (room,) = struct.unpack("<I", p.space.read(a[2], 4))
    p.space.write(a[1], struct.pack("<H", AF_UNIX)[:room])  # unnamed: the family alone
    p.space.write(a[2], struct.pack("<I", 2))
    return SyscallOutcome(0)


getsockname = errno_call(_name)
getpeername = errno_call(_name)

HANDLERS: dict[str, Handler] = {
    "socketpair": socketpair, "sendto": sendto, "recvfrom": recvfrom, "sendmsg": sendmsg,
    "recvmsg": recvmsg, "shutdown": shutdown, "getsockopt": getsockopt,
    "setsockopt": setsockopt, "getsockname": getsockname, "getpeername": getpeername,
}
