"""inotify (kernel/syscalls/watches.py, resources/watch.py): the musl workload `inotify`
watches a directory, changes files in it and prints the events it reads; it prints what the
same binary prints natively on both engines, while it moves between machines (the watches,
what they saw and the queued events travel in the image) and through a home machine when the
one it runs on has no host files. A change made by a program on the host wakes a blocking read
(as natively) and is found when the instance is read; an instance and its queue survive
pickling."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover, start_in, wait_ready
from support.programs import native_in, workload

from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import LocalFileService
from tender_ray.resources.home_files import DirectLink
from tender_ray.resources.watch import (
    ALL_EVENTS,
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Inotify,
)

MakeMachine = Callable[..., Machine]
ROUNDS = "12"


def _native(tmp_path: Path, rounds: str = ROUNDS) -> tuple[int, bytes, bytes]:
    where = tmp_path / "native"
    where.mkdir()
    return native_in("inotify", where, rounds)


def _exec(machine: Machine, tmp_path: Path, rounds: str = ROUNDS) -> int:
    where = tmp_path / "guest"
    where.mkdir()
    return start_in(machine, "inotify", where, rounds)


@pytest.mark.parametrize("engine", ENGINES)
def test_as_natively(make_machine: MakeMachine, tmp_path: Path, engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, _exec(machine, tmp_path))
    assert (status, out, err) == _native(tmp_path), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_through_migrations(make_machine: MakeMachine, tmp_path: Path, engine: str) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(3)]
    pid = _exec(machines[0], tmp_path, "40")
    where, records = bounce(machines, pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == _native(tmp_path, "40"), info.exit_reason


def test_through_a_home_without_host_files(make_machine: MakeMachine, tmp_path: Path) -> None:
    home = make_machine(name="home", quantum_us=1000, engine="emulated")
    away = make_machine(name="away", quantum_us=1000, engine="emulated", host_files="none")
    away.host_tree.link = lambda name: DirectLink(name, home.host_tree.home)
    pid = _exec(home, tmp_path, "40")
    where, records = bounce([home, away], pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish([home, away][where], pid)
    assert (status, out, err) == _native(tmp_path, "40"), info.exit_reason


READY = b"inotify: ready\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_change_made_on_the_host_wakes_a_blocking_read(make_machine: MakeMachine,
                                                         tmp_path: Path, engine: str) -> None:
    native_dir = tmp_path / "native"
    native_dir.mkdir()
    with subprocess.Popen([str(workload("inotify")), str(native_dir), "wait"],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env={}) as watcher:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == READY
        (native_dir / "made-outside").mkdir()
        expected = READY + watcher.stdout.read()
    machine = make_machine(quantum_us=1000, engine=engine)
    pid = _exec(machine, tmp_path, "wait")
    taken = wait_ready(machine, pid, line=READY)  # its watch is set: now the host changes it
    (tmp_path / "guest" / "made-outside").mkdir()
    status, out, err, info = finish(machine, pid)
    assert (status, taken + out, err) == (watcher.returncode, expected, b""), info.exit_reason


def _events(raw: bytes) -> list[tuple[int, int, str]]:
    """(mask, cookie, name) of each struct inotify_event in a read's bytes."""
    found, at = [], 0
    while at < len(raw):
        _, mask, cookie, size = struct.unpack_from("<iIII", raw, at)
        found.append((mask, cookie, raw[at + 16:at + 16 + size].rstrip(b"\0").decode()))
        at += 16 + size
    return found


def test_changes_made_on_the_host_are_found_and_the_queue_travels(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    instance = Inotify(os.O_NONBLOCK)
    service = LocalFileService()
    wd = instance.add("/w", str(tmp_path), ALL_EVENTS, service)
    assert instance.read(4096) is None and instance.wake_after() is not None
    (tmp_path / "new").write_text("made outside")
    (tmp_path / "old").rename(tmp_path / "moved")
    moved: Inotify = pickle.loads(pickle.dumps(instance))  # it moves before it reads
    assert moved.service is None and moved.read(4096) is None  # nothing looks without files
    moved.attach(service)
    events = _events(moved.read(4096) or b"")
    assert [(m, n) for m, _, n in events] == [(IN_MOVED_FROM, "old"), (IN_MOVED_TO, "moved"),
                                              (IN_CREATE, "new")]
    assert events[0][1] == events[1][1] != 0  # the two halves of the move share a cookie
    with open(tmp_path / "new", "a") as f:
        f.write(" and longer")
    (tmp_path / "moved").unlink()
    assert [(m, n) for m, _, n in _events(moved.read(4096) or b"")] == [
        (IN_DELETE, "moved"), (IN_MODIFY, "new")]
    moved.remove(wd)
    assert [m for m, _, _ in _events(moved.read(4096) or b"")] == [IN_IGNORED]
    with pytest.raises(OSError, match="not a watch"):
        moved.remove(wd)


def test_a_small_buffer_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    instance = Inotify(os.O_NONBLOCK)
    instance.add("/w", str(tmp_path), ALL_EVENTS, LocalFileService())
    (tmp_path / "a-long-name-for-a-file").write_text("")
    with pytest.raises(OSError, match="smaller than the next event"):
        instance.read(16)
    assert instance.queued_bytes() == 16 + 32
    assert [n for _, _, n in _events(instance.read(4096) or b"")] == ["a-long-name-for-a-file"]
