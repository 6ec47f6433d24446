"""The identity system calls: the user and group ids (the machine process's own, so what a
guest sees of its files' owners agrees with what it is), the system's name (uname), its
memory (sysinfo) and its entropy (getrandom)."""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING

from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.kernel.syscalls.base import Handler, answer
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "identity"

_SYSINFO = struct.Struct("<q3Q6QHHI2QI4x")  # struct sysinfo, 112 bytes on x86-64


def getgroups(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return SyscallOutcome(0)  # no supplementary groups


def uname(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    fields = [b"Linux", b"tender", b"6.0.0-tender", b"#1 Tender", b"x86_64", b"(none)"]
    assert p.space is not None
    p.space.write(a[0], b"".join(f.ljust(65, b"\0") for f in fields))
    return SyscallOutcome(0)


def sysinfo(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    memory = sc.managers.memory
    page = memory.size // max(memory.nframes, 1)
    info = _SYSINFO.pack(int(time.monotonic()), 0, 0, 0, memory.size,
                         memory.free_frames * page, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1)
    assert p.space is not None
    p.space.write(a[0], info)
    return SyscallOutcome(0)


def getrandom(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    count = min(a[1], 1 << 20)
    assert p.space is not None
    p.space.write(a[0], os.urandom(count))
    return SyscallOutcome(count)


def _three_ids(value: int) -> Handler:
    def call(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
        assert p.space is not None
        for addr in a[:3]:  # real, effective, saved: all the machine process's
            p.space.write(addr, struct.pack("<I", value))
        return SyscallOutcome(0)
    return call


HANDLERS: dict[str, Handler] = {
    "getuid": answer(os.getuid()), "geteuid": answer(os.geteuid()),
    "getgid": answer(os.getgid()), "getegid": answer(os.getegid()),
    "getgroups": getgroups, "uname": uname, "sysinfo": sysinfo, "getrandom": getrandom,
    "getresuid": _three_ids(os.getuid()), "getresgid": _three_ids(os.getgid()),
}
