"""Hard links, symbolic links, mknod and FIFOs (kernel/syscalls/file_tree.py, the FIFO open in
files.py, resources/fifo.py): the musl workload `links` prints what the same binary prints
natively — in place, while it migrates with FIFO ends open and data in them, and through a
home machine when the machine it runs on has no host files. Two processes of one machine
meet through a FIFO (each open waits for the other side); one holding a FIFO another
process shares is refused a move, saying why. The view's rules hold: EROFS outside the
writable directories, EXDEV for a link from outside them, EPERM for device nodes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover, wait_until
from support.programs import NATIVE_TIMEOUT, workload

from tender_ray.errors import MigrationError
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import DirectLink

MakeMachine = Callable[..., Machine]


def _native(where: Path, *args: str) -> tuple[int, bytes, bytes]:
    done = subprocess.run([str(workload("links")), str(where), *args], capture_output=True,
                          stdin=subprocess.DEVNULL, env={}, timeout=NATIVE_TIMEOUT,
                          check=False)
    return done.returncode, done.stdout, done.stderr


def _dir(tmp_path: Path, name: str) -> Path:
    where = tmp_path / name
    where.mkdir()
    return where


def _exec(machine: Machine, where: Path, *args: str, writable: Path | None = None,
          stdin: str = "empty") -> int:
    path = workload("links")
    return machine.exec(path.read_bytes(), "links", [str(path), str(where), *args],
                        files=FileViewSpec(cwd=str(where),
                                           writable=(str(writable or where),)), stdin=stdin)


@pytest.mark.parametrize("engine", ENGINES)
def test_as_natively(make_machine: MakeMachine, tmp_path: Path, engine: str) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, _exec(machine, _dir(tmp_path, "guest")))
    assert (status, out, err) == _native(_dir(tmp_path, "native")), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_through_migrations(make_machine: MakeMachine, tmp_path: Path, engine: str) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(3)]
    pid = _exec(machines[0], _dir(tmp_path, "guest"), "30")
    where, records = bounce(machines, pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == _native(_dir(tmp_path, "native"), "30"), info.exit_reason


def test_through_a_home_without_host_files(make_machine: MakeMachine, tmp_path: Path) -> None:
    home = make_machine(name="home", quantum_us=1000, engine="emulated")
    away = make_machine(name="away", quantum_us=1000, engine="emulated", host_files="none")
    away.host_tree.link = lambda name: DirectLink(name, home.host_tree.home)
    pid = _exec(home, _dir(tmp_path, "guest"), "30")
    where, records = bounce([home, away], pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish([home, away][where], pid)
    assert (status, out, err) == _native(_dir(tmp_path, "native"), "30"), info.exit_reason


def _printed(machine: Machine, pid: int, line: bytes, what: str) -> None:
    wait_until(lambda: line in machine.scheduler.table[pid].stdout, 60.0, what,
               machine=machine)


READER = b"reader opened\nreader got 1240 bytes, 50 lines, then EOF\n"
WRITER = b"writer opened\nwriter done\n"


def test_a_fifo_joins_two_processes_of_a_machine(make_machine: MakeMachine,
                                                 tmp_path: Path) -> None:
    machine = make_machine(quantum_us=1000, engine="emulated")
    where = _dir(tmp_path, "guest")
    os.mkfifo(where / "pipe", 0o600)
    reader = _exec(machine, where, "reader")
    wait_until(lambda: machine.info(reader).syscalls.get("open", 0) >= 2, 60.0,
               "the reader waits in open", machine=machine)
    assert machine.scheduler.table[reader].stdout == b""  # no writer yet: it waits
    writer = _exec(machine, where, "writer")
    status, out, _, info = finish(machine, reader)
    assert (status, out) == (0, READER), info.exit_reason
    assert finish(machine, writer)[:2] == (0, WRITER)
    # Natively the same: the reader waits in open for the writer.
    native = _dir(tmp_path, "native")
    os.mkfifo(native / "pipe", 0o600)
    with subprocess.Popen([str(workload("links")), str(native), "reader"],
                          stdout=subprocess.PIPE, env={}) as host_reader:
        host_writer = subprocess.run([str(workload("links")), str(native), "writer"],
                                     capture_output=True, env={}, timeout=NATIVE_TIMEOUT,
                                     check=False)
        assert host_reader.communicate(timeout=NATIVE_TIMEOUT)[0] == READER
    assert (host_writer.returncode, host_writer.stdout) == (0, WRITER)


def test_a_shared_fifo_end_is_refused_a_move(make_machine: MakeMachine,
                                             tmp_path: Path) -> None:
    a, b = (make_machine(name=n, quantum_us=1000, engine="emulated") for n in "ab")
    where = _dir(tmp_path, "guest")
    os.mkfifo(where / "pipe", 0o600)
    reader = _exec(a, where, "reader")
    writer = _exec(a, where, "writer", "hold", stdin="stream")
    _printed(a, writer, b"writer wrote\n", "the writer wrote and holds its end")
    for pid, other in ((reader, writer), (writer, reader)):
        with pytest.raises(MigrationError, match=rf"shares the FIFO /.*/pipe with process "
                           rf"{other} of this machine"):
            local_mover()(a, pid, b)
    a.feed_stdin(writer, b"", eof=True)  # both went on where they were
    status, out, _, info = finish(a, reader)
    assert (status, out) == (0, READER), info.exit_reason
    assert finish(a, writer)[:2] == (0, b"writer opened\nwriter wrote\nwriter done\n")


def test_the_views_rules(make_machine: MakeMachine, tmp_path: Path) -> None:
    """Names are made only under the writable directories; a link reaches no file outside
    them; device nodes and sockets are refused (natively, as root, they would be made)."""
    machine = make_machine(quantum_us=1000, engine="emulated")
    outside, inside = _dir(tmp_path, "outside"), _dir(tmp_path, "inside")
    (outside / "kept.txt").write_text("read-only\n")
    (inside / "kept.txt").write_text("mine\n")
    pid = _exec(machine, inside, "refusals", str(outside))
    status, out, _, info = finish(machine, pid)
    assert (status, out.decode()) == (0, f"""mknod char device: -1 Operation not permitted
mknod socket: -1 Operation not permitted
symlink into OTHER: -1 Read-only file system
link into OTHER: -1 Read-only file system
link from OTHER: -1 Cross-device link
mkfifo in OTHER: -1 Read-only file system
read {outside}/kept.txt: read-only
"""), info.exit_reason
    assert sorted(os.listdir(outside)) == ["kept.txt"]
    assert sorted(os.listdir(inside)) == ["kept.txt"]
