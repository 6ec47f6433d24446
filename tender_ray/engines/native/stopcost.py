"""What one mediated system call costs the two ways a Linux supervisor can take it: a ptrace
stop (SECCOMP_RET_TRACE, the native engine's way) against a seccomp user notification
(SECCOMP_RET_USER_NOTIF, answered through the listener descriptor), each serving `getppid` in a
loop of a host program, the supervisor in this Python process as the engine's tracer is.

Only the one call is sent to the supervisor (every other call is allowed), so a run's time over
its calls is the cost of a stop, its handling and the wake-up, nothing else of the engine.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tender_ray.engines.native.libc import (
    PTRACE_CONT,
    PTRACE_EVENT_SECCOMP,
    PTRACE_GETREGS,
    PTRACE_O_EXITKILL,
    PTRACE_O_TRACESECCOMP,
    PTRACE_SETOPTIONS,
    PTRACE_SETREGS,
    Regs,
    ptrace,
)
from tender_ray.errors import EngineError

_SYS_GETPPID: Final = 110
_SYS_SECCOMP: Final = 317
_SYS_PIDFD_OPEN: Final = 434
_SYS_PIDFD_GETFD: Final = 438
_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER: Final = 8
_RET_ALLOW: Final = 0x7FFF0000
_RET_TRACE: Final = 0x7FF00000
_RET_USER_NOTIF: Final = 0x7FC00000
_PR_SET_NO_NEW_PRIVS: Final = 38
_PTRACE_TRACEME: Final = 0
# The listener's ioctls: SECCOMP_IOWR(0, struct seccomp_notif), SECCOMP_IOWR(1, struct
# seccomp_notif_resp), SECCOMP_IOW(4, __u64) (Linux 6.6: wake the waiter on this CPU).
_NOTIF_RECV: Final = 0xC0502100
_NOTIF_SEND: Final = 0xC0182101
_NOTIF_SET_FLAGS: Final = 0x40082104
_USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1
_NOTIF_SIZE: Final = 80  # struct seccomp_notif: id, pid, flags, seccomp_data (64 bytes)
_MASK64: Final = (1 << 64) - 1


@dataclass(frozen=True)
class StopCost:
    """Microseconds per `getppid` served by the supervisor, per way (0.0: not measured)."""

    calls: int
    ptrace_us: float
    user_notif_us: float
    user_notif_sync_us: float  # with SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
    native_us: float  # the same loop, the kernel answering
    notes: str = ""
    served: dict[str, int] = field(default_factory=dict)  # calls each way answered, fewest


def _filter(action: int) -> bytes:
    """A BPF program: `action` for getppid, allow everything else."""
    insns = [(0x20, 0, 0, 0),  # load seccomp_data.nr
             (0x15, 0, 1, _SYS_GETPPID),  # getppid?
             (0x06, 0, 0, action),
             (0x06, 0, 0, _RET_ALLOW)]
    return b"".join(struct.pack("<HBBI", *i) for i in insns)


def _spawn(program: Path, argv: list[str], action: int, traced: bool) -> tuple[int, int, int]:
    """Fork a child that installs the filter and execs `program` once the returned descriptor
    is closed (its listener is close-on-exec: take it first); (pid, listener fd in the child or
    -1, go). A traced child stops at exec for PTRACE_SETOPTIONS."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    code = _filter(action)
    prog_buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("<HxxxxxxQ", len(code) // 8, ctypes.addressof(prog_buf))
    fprog_buf = ctypes.create_string_buffer(fprog)
    flags = _SECCOMP_FILTER_FLAG_NEW_LISTENER if action == _RET_USER_NOTIF else 0
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work until exec
        try:
            os.close(read_end)
            os.close(go_write)
            if traced:
                libc.ptrace(ctypes.c_long(_PTRACE_TRACEME), ctypes.c_long(0), None, None)
            libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0))
            fd = libc.syscall(ctypes.c_long(_SYS_SECCOMP), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                              ctypes.c_long(flags), ctypes.c_void_p(ctypes.addressof(fprog_buf)))
            os.write(write_end, struct.pack("<q", fd if fd >= 0 else -ctypes.get_errno()))
            os.close(write_end)
            os.read(go_read, 1)
            _exec_quietly(program, argv)
        finally:
            os._exit(127)
    os.close(write_end)
    os.close(go_read)
    raw = os.read(read_end, 8)
    os.close(read_end)
    (fd,) = struct.unpack("<q", raw) if len(raw) == 8 else (-1,)
    if fd < 0:
        os.close(go_write)
        os.waitpid(pid, 0)
        raise EngineError(f"the seccomp filter was refused ({os.strerror(-fd)})")
    return pid, fd, go_write


def _ptrace_run(program: Path, argv: list[str]) -> tuple[float, int]:
    pid, _, go = _spawn(program, argv, _RET_TRACE, traced=True)
    os.close(go)
    regs = Regs()
    ref = ctypes.addressof(regs)
    _, status = os.waitpid(pid, 0)  # the exec's SIGTRAP
    ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACESECCOMP)
    start = time.perf_counter()
    served = 0
    ptrace(PTRACE_CONT, pid, 0, 0)
    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            break
        if status >> 8 == 5 | PTRACE_EVENT_SECCOMP << 8:  # the call: answer it, skipped
            ptrace(PTRACE_GETREGS, pid, 0, ref)
            regs.rax, regs.orig_rax = 1, _MASK64
            served += 1
            ptrace(PTRACE_SETREGS, pid, 0, ref)
            ptrace(PTRACE_CONT, pid, 0, 0)
        else:
            sig = os.WSTOPSIG(status)
            ptrace(PTRACE_CONT, pid, 0, 0 if sig == 5 else sig)
    return time.perf_counter() - start, served


def _notif_run(program: Path, argv: list[str], sync_wake: bool) -> tuple[float, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    start = time.perf_counter()
    pid, child_fd, go = _spawn(program, argv, _RET_USER_NOTIF, traced=False)
    pidfd = libc.syscall(ctypes.c_long(_SYS_PIDFD_OPEN), ctypes.c_long(pid), ctypes.c_long(0))
    listener = libc.syscall(ctypes.c_long(_SYS_PIDFD_GETFD), ctypes.c_long(pidfd),
                            ctypes.c_long(child_fd), ctypes.c_long(0)) if pidfd >= 0 else -1
    os.close(go)
    if listener < 0:
        err = ctypes.get_errno()
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise EngineError(f"cannot take the seccomp listener: {os.strerror(err)}")
    try:
        if sync_wake:
            fcntl.ioctl(listener, _NOTIF_SET_FLAGS, _USER_NOTIF_FD_SYNC_WAKE_UP)  # by value
        notif = bytearray(_NOTIF_SIZE)
        resp = bytearray(24)
        served = 0
        while True:
            notif[:] = bytes(_NOTIF_SIZE)
            try:
                fcntl.ioctl(listener, _NOTIF_RECV, notif)
            except OSError:  # ENOENT: the child is gone (the filter's last user)
                break
            struct.pack_into("<QqiI", resp, 0, struct.unpack_from("<Q", notif)[0], 1, 0, 0)
            try:
                fcntl.ioctl(listener, _NOTIF_SEND, resp)
            except OSError:
                break
            served += 1
    finally:
        os.close(listener)
        os.close(pidfd)
    os.waitpid(pid, 0)
    return time.perf_counter() - start, served


def _exec_quietly(program: Path, argv: list[str]) -> None:
    """In a forked child: become `program` with its output thrown away."""
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.execv(program, [str(program), *argv])


def _plain_run(program: Path, argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            _exec_quietly(program, argv)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    return time.perf_counter() - start, 0


def measure(program: Path, calls: int = 20_000, repeat: int = 3) -> StopCost:
    """Per-call cost of each way, from `program getppid N` against `program getppid 0`
    (best of `repeat`). `program` is the `callcost` workload."""
    served: dict[str, int] = {}

    def per_call(way: str, run: Callable[[list[str]], tuple[float, int]]) -> float:
        fulls = [run(["getppid", str(calls)]) for _ in range(repeat)]
        served[way] = min(n for _, n in fulls)
        empty = min(run(["getppid", "0"])[0] for _ in range(repeat))
        return max(0.0, (min(t for t, _ in fulls) - empty) / calls * 1e6)

    notes: list[str] = []
    pt = per_call("ptrace", lambda a: _ptrace_run(program, a))
    native = per_call("native", lambda a: _plain_run(program, a))
    try:
        un = per_call("user_notif", lambda a: _notif_run(program, a, False))
    except (OSError, EngineError) as exc:
        un, notes = 0.0, [*notes, f"user notification: {exc}"]
    try:
        sync = per_call("user_notif_sync", lambda a: _notif_run(program, a, True))
    except (OSError, EngineError) as exc:
        sync, notes = 0.0, [*notes, f"synchronous wake-up: {exc}"]
    return StopCost(calls, round(pt, 2), round(un, 2), round(sync, 2), round(native, 3),
                    "; ".join(notes), served)
