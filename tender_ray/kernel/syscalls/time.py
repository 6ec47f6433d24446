"""The time system calls: clocks, sleeps (a signal ends them early, and a sleeping process
migrates with its time left), and the interval timers that raise signals (alarm,
setitimer/getitimer; their state is the process's `signals.SignalState`)."""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from tender_ray.abi import linux
from tender_ray.abi.cpu_state import SyscallArgs, SyscallOutcome
from tender_ray.abi.linux import Errno
from tender_ray.kernel import signals
from tender_ray.kernel.syscalls.base import Handler, err
from tender_ray.resources.process import Process

if TYPE_CHECKING:
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

FAMILY = "time"

_REALTIME_CLOCKS = frozenset({linux.CLOCK_REALTIME, linux.CLOCK_REALTIME_COARSE,
                              linux.CLOCK_REALTIME_ALARM})
_MONOTONIC_CLOCKS = frozenset({linux.CLOCK_MONOTONIC, linux.CLOCK_MONOTONIC_RAW,
                               linux.CLOCK_MONOTONIC_COARSE, linux.CLOCK_BOOTTIME,
                               linux.CLOCK_BOOTTIME_ALARM})
_CPU_CLOCKS = frozenset({linux.CLOCK_PROCESS_CPUTIME_ID, linux.CLOCK_THREAD_CPUTIME_ID})


def clock_ns(p: Process, clock: int) -> int | None:
    """The time of a clock in ns (None: no such clock)."""
    if clock in _REALTIME_CLOCKS:
        return time.time_ns()
    if clock in _MONOTONIC_CLOCKS:
        return time.monotonic_ns()
    if clock in _CPU_CLOCKS:
        return int(p.accounting.cpu_seconds * 1e9)
    return None


def clock_gettime(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    ns = clock_ns(p, a[0])
    if ns is None:
        return SyscallOutcome(-Errno.EINVAL)
    assert p.space is not None
    p.space.write(a[1], struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000))
    return SyscallOutcome(0)


def clock_getres(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if clock_ns(p, a[0]) is None:
        return SyscallOutcome(-Errno.EINVAL)
    if a[1]:
        assert p.space is not None
        p.space.write(a[1], struct.pack("<qq", 0, 1))
    return SyscallOutcome(0)


def gettimeofday(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if a[0]:
        ns = time.time_ns()
        assert p.space is not None
        p.space.write(a[0], struct.pack("<qq", ns // 1_000_000_000, ns // 1000 % 1_000_000))
    return SyscallOutcome(0)


def time_(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    now = time.time_ns() // 1_000_000_000
    if a[0]:
        assert p.space is not None
        p.space.write(a[0], struct.pack("<q", now))
    return SyscallOutcome(now)


def _sleep(sc: SystemCalls, p: Process, req: int, absolute_clock: int | None,
           rem: int = 0) -> SyscallOutcome:
    assert p.space is not None
    sec, nsec = struct.unpack("<qq", p.space.read(req, 16))
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        return SyscallOutcome(-Errno.EINVAL)
    seconds = sec + nsec / 1e9
    if absolute_clock is not None:
        now = clock_ns(p, absolute_clock)
        if now is None:
            return SyscallOutcome(-Errno.EINVAL)
        seconds = max(0.0, seconds - now / 1e9)
    signals.of(p).wait = signals.Wait("sleep", until=time.time() + seconds, rem=rem,
                                      thread=signals.tid_of(p))  # a signal: -EINTR
    sc.services.sleep_process(p, seconds)
    return SyscallOutcome(0, stop=True)


def nanosleep(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    return _sleep(sc, p, a[0], None, a[1])


def clock_nanosleep(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    if clock_ns(p, a[0]) is None:
        return SyscallOutcome(-Errno.EINVAL)
    absolute = bool(a[1] & linux.TIMER_ABSTIME)
    return _sleep(sc, p, a[2], a[0] if absolute else None, 0 if absolute else a[3])


# --- interval timers --------------------------------------------------------------------------

def _timer_value(state: signals.SignalState) -> tuple[float, float]:
    left = 0.0 if state.timer_at is None else max(1e-6, state.timer_at - time.monotonic())
    return left, state.timer_interval


def _timeval(seconds: float) -> tuple[int, int]:
    us = round(seconds * 1e6)
    return us // 1_000_000, us % 1_000_000


def _arm(sc: SystemCalls, p: Process, value: float, interval: float) -> None:
    state = signals.of(p)
    state.timer_at = time.monotonic() + value if value > 0 else None
    state.timer_interval = interval if value > 0 else 0.0
    sc.services.timer_changed(p)


def alarm(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    left, _ = _timer_value(signals.of(p))
    _arm(sc, p, float(a[0] & 0xFFFFFFFF), 0.0)
    return SyscallOutcome(int(left + 0.5) if left >= 1 or left == 0 else 1)


def _cpu_timer_value(p: Process, which: int) -> tuple[float, float]:
    at, interval = signals.of(p).cpu_timers.get(which, (0.0, 0.0))
    left = max(1e-6, at - p.accounting.cpu_seconds) if at else 0.0
    return left, interval


def getitimer(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    which = a[0] & 0xFFFFFFFF
    if which not in (linux.ITIMER_REAL, linux.ITIMER_VIRTUAL, linux.ITIMER_PROF):
        return err(Errno.EINVAL)
    left, interval = (_timer_value(signals.of(p)) if which == linux.ITIMER_REAL
                      else _cpu_timer_value(p, which))
    assert p.space is not None
    p.space.write(a[1], struct.pack("<qqqq", *_timeval(interval), *_timeval(left)))
    return SyscallOutcome(0)


def setitimer(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """ITIMER_REAL on the wall clock; ITIMER_VIRTUAL and ITIMER_PROF on the process's CPU
    time (both count all of it: a Tender process's time is not split into user and system),
    checked between its runs."""
    which = a[0] & 0xFFFFFFFF
    if which not in (linux.ITIMER_REAL, linux.ITIMER_VIRTUAL, linux.ITIMER_PROF):
        return err(Errno.EINVAL)
    assert p.space is not None
    new = struct.unpack("<qqqq", p.space.read(a[1], 32)) if a[1] else (0, 0, 0, 0)
    if any(v < 0 for v in new) or new[1] >= 1_000_000 or new[3] >= 1_000_000:
        return err(Errno.EINVAL)
    value, interval = new[2] + new[3] / 1e6, new[0] + new[1] / 1e6
    real = which == linux.ITIMER_REAL
    old = _timer_value(signals.of(p)) if real else _cpu_timer_value(p, which)
    if a[2]:
        p.space.write(a[2], struct.pack("<qqqq", *_timeval(old[1]), *_timeval(old[0])))
    if which == linux.ITIMER_REAL:
        _arm(sc, p, value, interval)
    elif value > 0:
        signals.of(p).cpu_timers[which] = (p.accounting.cpu_seconds + value, interval)
    else:
        signals.of(p).cpu_timers.pop(which, None)
    return SyscallOutcome(0)


TICKS = 100  # sysconf(_SC_CLK_TCK)


def times(sc: SystemCalls, p: Process, a: SyscallArgs) -> SyscallOutcome:
    """Its CPU time as user time (a Tender process's time is not split), no children."""
    if a[0]:
        assert p.space is not None
        p.space.write(a[0], struct.pack("<qqqq", int(p.accounting.cpu_seconds * TICKS), 0, 0,
                                        0))
    return SyscallOutcome(int(time.monotonic() * TICKS))


HANDLERS: dict[str, Handler] = {
    "clock_gettime": clock_gettime, "clock_getres": clock_getres,
    "gettimeofday": gettimeofday, "time": time_, "nanosleep": nanosleep,
    "clock_nanosleep": clock_nanosleep,
    "alarm": alarm, "getitimer": getitimer, "setitimer": setitimer, "times": times,
}
