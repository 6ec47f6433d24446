"""A process's streams are what they are (kernel/syscalls/files.py `stat_of`): its standard
output and error are pipes of their own, never /dev/null's twin, so GNU grep and tar — which
compare fstat(1) with stat("/dev/null") and skip their work when they match — print what
they print natively; a standard input redirected from a file is that file (gzip stores its
time); both ends of a pipe are one pipe, and the /dev files differ."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import finish, run_on_machine
from support.programs import need, run_native

from tender_ray.kernel.machine import Machine
from tender_ray.kernel.syscalls import file_stat
from tender_ray.resources.file_view import FileStat, FileViewSpec
from tender_ray.resources.open_file import (
    OpenFile,
    OutputStream,
    PipeBuffer,
    PipeEnd,
    StdinStream,
)

MakeMachine = Callable[..., Machine]


@pytest.fixture()
def text(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i * 7919 % 1000} line {i}\n" for i in range(5000)))
    return path


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("program", [["/usr/bin/grep", "-c", "7"], ["/usr/bin/grep", "99 line"],
                                     ["/usr/bin/tar", "-cf", "-", "-C", "{dir}", "in.txt"]],
                         ids=["grep-c", "grep", "tar"])
def test_debian_programs_write_to_their_stdout(make_machine: MakeMachine, text: Path,
                                                engine: str, program: list[str]) -> None:
    need(program[0])
    args = [a.replace("{dir}", str(text.parent)) for a in program[1:]]
    if program[0].endswith("grep"):
        args.append(str(text))
    native = run_native(program[0], args)
    assert native[1], "the native run printed nothing: nothing to compare"
    machine = make_machine(quantum_us=1000, engine=engine, memory_mib=128)
    status, out, err, info = run_on_machine(machine, program[0], args, timeout=300)
    assert (status, out) == native[:2], (err, info.exit_reason)


def test_streams_pipes_and_devices_tell_themselves_apart() -> None:
    def st(f: OpenFile) -> FileStat:  # these descriptions need no machine, no process
        return file_stat.stat_of(None, None, f)  # type: ignore[arg-type]
    out, err, stdin = OutputStream(1), OutputStream(2), StdinStream()
    pipe = PipeBuffer()
    ends = PipeEnd(pipe, False, 0), PipeEnd(pipe, True, 0)
    null, zero = file_stat._device("null"), file_stat._device("zero")
    assert all(stat.S_ISFIFO(st(f).mode) for f in (out, err, stdin, *ends))
    assert st(ends[0]).ino == st(ends[1]).ino  # one pipe
    inodes = {st(out).ino, st(err).ino, st(stdin).ino, st(ends[0]).ino}
    assert len(inodes) == 4 and st(out).ino == st(out).ino  # each its own, and it keeps it
    assert stat.S_ISCHR(null.mode) and (null.rdev, zero.rdev) == (0x103, 0x105)
    assert (null.dev, null.ino) not in {(st(f).dev, st(f).ino) for f in (out, err)}


@pytest.mark.parametrize("engine", ENGINES)
def test_gzip_of_a_redirected_file_stores_its_time(make_machine: MakeMachine, text: Path,
                                                    engine: str) -> None:
    """gzip stores fstat(0)'s mtime in its header when stdin is a regular file: a stdin
    given as a file of the view is that file."""
    need("/usr/bin/gzip")
    os.utime(text, (1_500_000_000, 1_500_000_000))
    with text.open("rb") as stdin:
        native = subprocess.run(["/usr/bin/gzip", "-c"], stdin=stdin, capture_output=True,
                                env={}, timeout=60, check=True)
    machine = make_machine(quantum_us=1000, engine=engine, memory_mib=128)
    image = Path("/usr/bin/gzip").read_bytes()
    pid = machine.exec(image, "gzip", ["/usr/bin/gzip", "-c"], stdin=str(text),
                       files=FileViewSpec(cwd=str(text.parent), writable=()))
    status, out, err, info = finish(machine, pid, timeout=300)
    assert (status, err) == (0, b""), info.exit_reason
    assert out == native.stdout and out[4:8] == (1_500_000_000).to_bytes(4, "little")
