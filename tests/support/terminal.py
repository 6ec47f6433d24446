"""A command on a pty of its own, as typed at an interactive shell: it leads its own session
and process group, the pty is its controlling terminal, and ^C typed there is SIGINT to that
group (the terminal driver's doing, not the test's). For the tests of Ctrl-C through exec."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import time
from collections.abc import Callable, Sequence

from support.processes import group_members
from tender_ray.cli import status

PATIENCE = 240.0  # seconds a line may take to come on a very busy host


class Terminal:
    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str | os.PathLike[str]
                 ) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the command
            os.chdir(cwd)
            os.execve(argv[0], list(argv), env)
        self.seen = b""
        self.status: int | None = None

    def wait_for(self, text: bytes, deadline: float = PATIENCE) -> None:
        """Read the terminal until `text` appears (or the command ends, which fails)."""
        self.wait_until(lambda seen: text in seen, repr(text), deadline)

    def wait_until(self, seen_enough: Callable[[bytes], bool], what: str,
                   deadline: float = PATIENCE) -> None:
        """Read the terminal until what it showed so far is enough (or the command ends
        before, which fails)."""
        end = time.monotonic() + deadline
        while not seen_enough(self.seen):
            assert time.monotonic() < end, f"no {what} in {self.seen!r}"
            if not self._read(end):
                raise AssertionError(f"the command ended before {what}: {self.seen!r}")

    def _read(self, end: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: every writer of the terminal has gone
            return False
        self.seen += data
        return bool(data)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def finish(self) -> int:
        """Everything the command wrote to the end, and its exit status (as a shell shows
        it)."""
        end = time.monotonic() + PATIENCE
        while self._read(end):
            assert time.monotonic() < end, self.seen
        _, wait_status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.status = os.waitstatus_to_exitcode(wait_status)
        if self.status < 0:
            self.status = 128 - self.status
        return self.status

    def kill(self) -> None:
        """Whatever is left of the command and its process group, by pid."""
        if self.status is None:
            with_group = [p for p in group_members(self.pid) if p != self.pid]
            for pid in [self.pid, *with_group]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            os.close(self.fd)
            self.status = -1


def assert_ctrl_c_kills(t: Terminal) -> None:
    """^C typed at `t` once its program is ready: exec exits 128+SIGINT with its one-line
    note (after the terminal's echo of ^C; a library's exit handler may reset attributes
    after it), and no traceback."""
    t.type(b"\x03")
    assert t.finish() == status.SIGNAL_BASE + signal.SIGINT, t.seen
    text = t.seen.decode()
    assert re.search(r"\^Ctender-ray: process \d+ killed by SIGINT\r\n", text), text
    assert "Traceback" not in text
