"""Running one program as a Tender process on a cluster and following it to its end.

The driver forwards the process's output as it appears, follows it from machine to machine when
it migrates, and returns what `tender-ray exec --stats` reports.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tender_ray import logs
from tender_ray.cluster.cluster import Cluster, MachineHandle
from tender_ray.cluster.supervisor import recover
from tender_ray.errors import (
    BadProgramError,
    CordonedError,
    MachineError,
    MachineStoppedError,
    NoReplyError,
    ProcessStateError,
    UnknownProcessError,
    UsageError,
)
from tender_ray.kernel.snapshots import OutputChunk, ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.program import parse_program

OutputSink = Callable[[int, bytes], None]  # (fd, data)


@dataclass
class ExecResult:
    pid: int
    exit_status: int
    exit_reason: str
    run_seconds: float
    cpu_seconds: float
    syscalls: dict[str, int]
    unsupported: dict[str, int]
    migrations: list[MigrationRecord] = field(default_factory=list)
    machine: str = ""

    def stats(self) -> dict[str, Any]:
        return {"pid": self.pid, "exit_status": self.exit_status,
                "exit_reason": self.exit_reason, "run_seconds": self.run_seconds,
                "cpu_seconds": self.cpu_seconds, "syscalls": self.syscalls,
                "unsupported_syscalls": self.unsupported,
                "migrations": [m.as_dict() for m in self.migrations],
                "final_machine": self.machine}


def read_program(path: str | os.PathLike[str]) -> bytes:
    """The program file's bytes, checked to be an x86-64 Linux executable."""
    p = Path(path)
    if not p.exists():
        raise BadProgramError(str(path), "no such file")
    if not p.is_file():
        raise BadProgramError(str(path), "not a regular file")
    try:
        image = p.read_bytes()
    except OSError as exc:
        raise BadProgramError(str(path), f"cannot be read ({exc.strerror})") from exc
    parse_program(image, str(path))
    return image


STDIN_BLOCK = 1 << 16  # the driver reads its standard input in blocks of 64 KiB
STDIN_BLOCKS_HELD = 16  # blocks read ahead of the guest at most (bounded memory)


class StdinPump:
    """The driver's standard input, read by a thread into a bounded queue of blocks and fed
    by the exec loop to whichever machine holds the process now. A block the guest's buffer
    has no room for waits for a later round (back-pressure)."""

    def __init__(self, fd: int) -> None:
        self.blocks: queue.Queue[bytes] = queue.Queue(STDIN_BLOCKS_HELD)  # b"": end of file
        self.held: bytes | None = None  # the exec loop's: a block not yet taken
        self.done = False  # the end of file was passed on
        threading.Thread(target=self._read, args=(fd,), name="stdin", daemon=True).start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                block = os.read(fd, STDIN_BLOCK)
            except OSError:
                block = b""  # unreadable from now on: the guest sees the end of its input
            self.blocks.put(block)
            if not block:
                return

    def feed(self, where: MachineHandle, pid: int) -> None:
        """Feed what is read so far, as much as the guest's buffer takes."""
        while not self.done:
            if self.held is None:
                try:
                    self.held = self.blocks.get_nowait()
                except queue.Empty:
                    return
            try:
                where.feed_stdin(pid, self.held, eof=not self.held)
            except UsageError:
                return  # its buffer is full: try again next round
            self.done = not self.held
            self.held = None


def stdin_mode(fd: int = 0) -> str:
    """"stream" when the driver has a standard input, else "none" (the guest gets EBADF)."""
    try:
        os.fstat(fd)
    except OSError:
        return "none"
    return "stream"


def _start(cluster: Cluster, names: list[str], image: bytes, name: str, argv: list[str],
           env: list[str], files: FileViewSpec | None = None,
           stdin: str = "empty") -> tuple[MachineHandle, int]:
    """Start the process on the first of `names` that takes it (a cordoned one does not)."""
    for machine in names:
        handle = cluster.machine(machine)
        try:
            return handle, handle.exec(image, name, argv, env, files=files, stdin=stdin)
        except CordonedError:
            continue
    # Say what the user can do from here, which the machine's own refusal cannot know.
    others = [m for m in cluster.machines if m not in names]
    if len(names) == 1 and others:
        raise CordonedError(f"machine {names[0]} is cordoned (draining): start the program on "
                            f"another with --machine ({', '.join(others)}), or "
                            f"`tender-ray undrain {names[0]}`")
    raise CordonedError(f"every machine is cordoned (draining: {', '.join(names)}): "
                        "`tender-ray undrain NAME` one of them first")


RESTARTED_ELSEWHERE_PATIENCE = 120.0  # seconds another restarter's copy may take to appear


def _restarted(cluster: Cluster, dead: str, pid: int) -> MachineHandle:
    """The machine process `pid` runs on after its machine `dead` died: restarted from its
    last checkpoint (here, or by another restarter such as `up`'s restart watch), or found
    alive elsewhere; MachineError when it was lost."""
    recovery = recover(cluster, dead, [pid])
    for r in recovery.restarted:
        logs.get("exec").warning("machine died; process restarted from its checkpoint",
                                 pid=pid, machine=r.machine, lost_machine=dead, seq=r.seq)
        return cluster.machine(r.machine)
    for x in recovery.lost:
        raise MachineError(f"process {pid} was lost with machine {dead}: {x.reason} (run "
                           "with --checkpoint-every to have it restart elsewhere)")
    for e in recovery.elsewhere:
        logs.get("exec").warning("machine died; another restarter restarted the process",
                                 pid=pid, machine=e.machine, lost_machine=dead)
        # Its claim comes before its copy joins a machine's table: wait for the copy.
        deadline = time.monotonic() + RESTARTED_ELSEWHERE_PATIENCE
        while True:
            try:
                return cluster.locate(pid)
            except UnknownProcessError:
                if time.monotonic() > deadline:
                    raise MachineError(
                        f"process {pid} was lost with machine {dead}: another restart "
                        f"claimed it for machine {e.machine}, but it runs nowhere after "
                        f"{RESTARTED_ELSEWHERE_PATIENCE:.0f} s ({e.reason})") from None
                time.sleep(0.1)
    return cluster.locate(pid)


def execute(cluster: Cluster, path: str, args: Sequence[str], env: Sequence[str], *,
            machine: str | None = None, sink: OutputSink | None = None,
            poll_seconds: float = 0.02, migrate_every: float | None = None,
            options: MigrationOptions | None = None, files: FileViewSpec | None = None,
            stdin_fd: int | None = None) -> ExecResult:
    """Run `path` as a Tender process on `machine` (default: the first) until it ends.

    With `migrate_every`, the process is migrated round-robin to the next machine at that
    interval while it runs; a migration that cannot happen (the process is just ending) is
    skipped, and the process goes on where it is. `files` is its view of the host tree;
    with `stdin_fd` the driver's standard input is streamed to it (EBADF if fd is closed).
    """
    image = read_program(path)
    names = list(cluster.machines)
    name = os.path.basename(path)
    stdin = "empty" if stdin_fd is None else stdin_mode(stdin_fd)
    where, pid = _start(cluster, [machine] if machine else names, image, name,
                        [name, *args], list(env), files, stdin)
    pump = StdinPump(stdin_fd) if stdin_fd is not None and stdin == "stream" else None
    if migrate_every is not None:
        poll_seconds = min(poll_seconds, migrate_every)
    next_move = time.monotonic() + (migrate_every or 0.0)

    def forward(out: bytes, err: bytes) -> None:
        if sink is not None:
            if out:
                sink(1, out)
            if err:
                sink(2, err)

    # Bytes of each stream forwarded so far: a process restarted from a checkpoint sends
    # again what its checkpoint had not handed over yet, and that is written once.
    sent = {1: 0, 2: 0}

    def forward_chunks(chunks: Sequence[OutputChunk]) -> None:
        for c in chunks:
            new = c.data[max(0, sent[c.fd] - c.offset):]
            sent[c.fd] = max(sent[c.fd], c.offset + len(c.data))
            if new and sink is not None:
                sink(c.fd, new)

    info: ProcessInfo
    while True:
        try:
            if pump is not None:
                pump.feed(where, pid)
            info = where.wait(pid, timeout=poll_seconds)
            forward_chunks(where.take_chunks(pid))
        except UnknownProcessError:
            where = cluster.locate(pid)  # moved by someone else (a balancer, a drain)
            continue
        except MachineStoppedError as exc:
            if isinstance(exc, NoReplyError):
                continue  # slow, not dead: ask again
            where = _restarted(cluster, where.name, pid)
            names = list(cluster.machines)  # the dead one has left
            continue
        if info.state == "zombie":
            break
        if migrate_every is not None and len(names) > 1 and time.monotonic() >= next_move:
            target = names[(names.index(where.name) + 1) % len(names)]
            try:
                where.migrate(pid, target, options)
                where = cluster.machine(target)
            except ProcessStateError:
                pass  # it ended (or is ending) while we asked: nothing to move
            except UnknownProcessError:
                where = cluster.locate(pid)  # someone else moved it first
            except MachineError as exc:
                # The destination broke; the migration rolled back and the process goes on
                # where it is. Say so (in the log, not in the program's output), keep going.
                logs.get("exec").warning("migration failed", pid=pid, destination=target,
                                         error=str(exc))
            next_move = time.monotonic() + migrate_every
    info, out, err = where.reap(pid)
    forward(out, err)
    return ExecResult(pid=pid, exit_status=info.exit_status if info.exit_status is not None
                      else 128 + 9, exit_reason=info.exit_reason,
                      run_seconds=info.run_seconds, cpu_seconds=info.cpu_seconds,
                      syscalls=info.syscalls, unsupported=info.unsupported,
                      migrations=list(info.migrations), machine=where.name)
