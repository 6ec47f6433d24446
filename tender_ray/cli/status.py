"""The exit statuses of `tender-ray`, in one place (the README's "Exit status" table lists
them), and the error a command raises when the Ray cluster it was pointed at cannot be reached.

Scripts branch on these: a status says which kind of thing went wrong, the one line on stderr
says what exactly.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from tender_ray.errors import TenderError, UsageError

OK = 0
FAILED = 1  # the work ran but did not succeed: scenario problems, a drain left processes,
# outputs differ from native
USAGE = 2  # bad input: usage, a bad program or config, an unknown machine or process
UNREACHABLE = 3  # the Ray cluster cannot be reached, or a machine of it broke
SIGNAL_BASE = 128  # 128+N: the guest was killed by signal N (what a shell reports)
INTERRUPTED = SIGNAL_BASE + 2  # Ctrl-C (SIGINT) during a command
# `exec` passes its program's own status on, so its own failures take the statuses env,
# docker run and the shells keep for themselves, which programs rarely use.
EXEC_FAILED = 125  # exec itself failed: usage, the cluster (unreachable, stopped, broken)
CANNOT_RUN = 126  # the program was found but cannot run (not an executable we can load)
NOT_FOUND = 127  # no such program (a path that does not exist, a name not on PATH)


class UnreachableError(TenderError):
    """No Ray cluster answers at the address a command was given (or that `up` recorded)."""


PROBE_SECONDS = 3.0  # how long a Ray head's port may take to accept a connection


def unreachable(address: str | None, detail: str = "") -> UnreachableError:
    """What to say when no Ray cluster answers at `address`: one line, and what to do."""
    where = f"at {address!r}" if address else "to join"
    return UnreachableError(f"no Ray cluster {where}{f' ({detail})' if detail else ''}: "
                            "start one with `tender-ray up` or `ray start --head`, or drop "
                            "--address (and unset RAY_ADDRESS) to run an embedded one")


def check_reachable(address: str | None) -> None:
    """Raise UnreachableError unless a Ray head listens at `address` (None: an embedded Ray,
    nothing to check). Asked before Ray is: given an address nobody answers at, ray.init
    retries for minutes, printing its own warnings, instead of saying so. `auto` is resolved
    before (`operate.resolve_auto`): Ray's own reading of it joins whatever Ray this host
    started last."""
    import socket

    if address is None or address == "local" or "://" in address:
        return  # embedded, or a Ray client address: Ray's own errors say enough
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: not host:port (e.g. 127.0.0.1:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        raise unreachable(address, f"it does not answer: {exc.strerror or exc}") from None


SLOW_SECONDS = 2.0  # a step taking longer than this says what it is doing


@contextlib.contextmanager
def notice_if_slow(message: str, *, stream: TextIO | None = None, tty_only: bool = True,
                   after: float = SLOW_SECONDS) -> Iterator[None]:
    """Print `message` (one line) once the step inside has taken `after` seconds, so a slow
    start or stop is not silent. `tty_only`: only on a terminal (exec's stderr is also its
    program's, which scripts compare)."""
    out = stream or sys.stderr
    if tty_only and not out.isatty():
        yield
        return

    def say() -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=out, flush=True)

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
