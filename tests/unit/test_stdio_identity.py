"""What a program's standard streams are, and its private /tmp, as `tender-ray exec` gives
them (cli/execute.py `stream_identity`, `stdin_source`; kernel/syscalls/files.py `stat_of`,
`terminal_ioctl`; resources/file_view.py's /tmp), and the memory exec's machines get
(cli/exec_command.py) — all without Ray: exec's own descriptors are real ones here, the
guests run on plain machines."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import finish
from support.programs import need

from tender_ray.abi.linux import TCGETS, TIOCGWINSZ
from tender_ray.cli.exec_command import default_memory_mib, memory_message
from tender_ray.cli.execute import stdin_source, stream_identity
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.syscalls import file_stat, proc_files
from tender_ray.resources.file_view import (
    FileStat,
    FileView,
    FileViewSpec,
    LocalFileService,
    StreamIdentity,
)
from tender_ray.resources.open_file import FilesImage, OpenFile, OutputStream, standard_files

MakeMachine = Callable[..., Machine]


def _stat(f: OpenFile) -> FileStat:
    return file_stat.stat_of(None, None, f)  # type: ignore[arg-type]  # streams need neither


@pytest.fixture()
def text(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i * 7919 % 1000} line {i}\n" for i in range(5000)))
    return path


# --- exec's own descriptors, told apart ----------------------------------------------------

def _standard(identity: StreamIdentity | None) -> OutputStream:
    return OutputStream(1, identity)  # a standard stream that is exec's descriptor


def test_exec_tells_its_descriptors_apart(text: Path, tmp_path: Path) -> None:
    """A regular file of the view read from its start is given by its path; one read partly,
    a pipe or a terminal is streamed; /dev/null is /dev/null; a closed one is none."""
    spec = FileViewSpec(root="/", cwd=str(tmp_path))
    with text.open("rb") as f:
        assert stream_identity(f.fileno()).kind == "file"  # type: ignore[union-attr]
        # /proc/self/fd/0 of the guest names it as exec's descriptor does
        assert proc_files.describe(_standard(stream_identity(f.fileno()))) == str(text)
        assert stdin_source(f.fileno(), spec) == str(text.resolve())
        f.read(10)
        assert stdin_source(f.fileno(), spec) == "stream"  # the rest, as natively
        outside = FileViewSpec(root=str(tmp_path / "elsewhere"), cwd="/")
        f.seek(0)
        assert stdin_source(f.fileno(), outside) == "stream"  # no name in that view
    r, w = os.pipe()
    try:
        assert stream_identity(r).kind == "pipe"  # type: ignore[union-attr]
        pipe = proc_files.describe(_standard(stream_identity(r)))
        assert pipe == f"pipe:[{os.fstat(r).st_ino}]"
        assert stdin_source(r, spec) == "stream"
    finally:
        os.close(r)
        os.close(w)
    assert stdin_source(r, spec) == "none"  # closed
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        assert stdin_source(null, spec) == "/dev/null"
        assert stream_identity(null).kind == "null"  # type: ignore[union-attr]
    finally:
        os.close(null)
    leader, follower = os.openpty()
    try:
        tty = stream_identity(follower)
        assert tty is not None and tty.kind == "terminal"
        assert proc_files.describe(_standard(tty)) == os.ttyname(follower)
        assert len(tty.termios) == 36 and len(tty.winsize) == 8
        assert stdin_source(follower, spec) == "stream"
    finally:
        os.close(leader)
        os.close(follower)


def test_streams_answer_as_what_they_are_and_keep_it_in_the_image(text: Path) -> None:
    """fstat of descriptors 1 and 2 answers exec's file, terminal or /dev/null (the view's,
    so grep and tar comparing the two find them one); TCGETS and TIOCGWINSZ answer a
    terminal's settings; all of it travels in the process image."""
    with text.open("rb") as f:
        as_file = stream_identity(f.fileno())
    assert as_file is not None
    winsize = b"\x18\0\x50\0" + bytes(4)  # 24 rows, 80 columns
    terminal = StreamIdentity(as_file.stat, "terminal", bytes(range(36)), winsize)
    null = StreamIdentity(as_file.stat, "null")
    table = standard_files(None, (None, as_file, terminal))
    out, err = table.get(1), table.get(2)
    st = text.stat()
    assert stat.S_ISREG(_stat(out).mode)
    assert (_stat(out).dev, _stat(out).ino, _stat(out).mtime_ns) == (st.st_dev, st.st_ino,
                                                                       st.st_mtime_ns)
    assert file_stat.terminal_ioctl(err, TCGETS) == bytes(range(36))
    assert file_stat.terminal_ioctl(err, TIOCGWINSZ) == winsize
    assert file_stat.terminal_ioctl(out, TCGETS) is None  # a file is no terminal: ENOTTY
    assert _stat(standard_files(None, (None, null)).get(1)) == file_stat._device("null")
    moved, _ = FilesImage.of(table, None).restore()
    assert _stat(moved.get(1)) == _stat(out)
    assert file_stat.terminal_ioctl(moved.get(2), TIOCGWINSZ) == winsize


@pytest.mark.parametrize("engine", ENGINES)
def test_grep_writes_to_a_file_and_skips_work_for_dev_null(make_machine: MakeMachine,
                                                           text: Path, tmp_path: Path,
                                                           engine: str) -> None:
    """GNU grep -c prints its count when its stdout is a file (natively redirected to one)
    and nothing when it is /dev/null (it compares the two): under Tender as natively."""
    need("/usr/bin/grep")
    target = tmp_path / "out.txt"
    with target.open("wb") as out:
        native = subprocess.run(["/usr/bin/grep", "-c", "7", str(text)], stdout=out,
                                env={}, timeout=60, check=False)
        as_file = stream_identity(out.fileno())
    assert native.returncode == 0 and target.read_bytes()
    image = Path("/usr/bin/grep").read_bytes()
    machine = make_machine(quantum_us=1000, engine=engine, memory_mib=128)
    null = StreamIdentity(FileStat.of(os.stat(os.devnull)), "null")
    for outside, expected in ((as_file, target.read_bytes()), (null, b"")):
        spec = FileViewSpec(cwd=str(tmp_path), writable=(), stdio=(None, outside, None))
        pid = machine.exec(image, "grep", ["/usr/bin/grep", "-c", "7", str(text)], files=spec)
        status, out_bytes, err, info = finish(machine, pid, timeout=300)
        assert (status, out_bytes, err) == (0, expected, b""), info.exit_reason


# --- the private /tmp ----------------------------------------------------------------------

def test_private_tmp_takes_new_files_and_leaves_the_hosts_readable(tmp_path: Path) -> None:
    root, private = tmp_path / "root", tmp_path / "private"
    (root / "tmp").mkdir(parents=True)
    private.mkdir()
    (root / "tmp" / "given.txt").write_text("input\n")
    view = FileView(FileViewSpec(root=str(root), cwd="/", writable=(), tmp=str(private)),
                    LocalFileService())
    assert view.resolve("/tmp").host == str(private)
    new = view.resolve("/tmp/sortAbc123")
    assert new.host == str(private / "sortAbc123")
    view.check_writable(new)  # the run's own /tmp is writable
    given = view.resolve("/tmp/given.txt")
    assert given.host == str(root / "tmp" / "given.txt")  # still readable by its name
    with pytest.raises(OSError) as refused:
        view.check_writable(given)
    assert refused.value.errno == 30  # EROFS: the host's /tmp is not the program's
    with pytest.raises(OSError):
        view.check_writable(view.resolve("/etc/passwd"))
    (private / "given.txt").write_text("mine\n")
    assert view.resolve("/tmp/given.txt").host == str(private / "given.txt")  # its own first
    moved = FilesImage.of(standard_files(), view).restore()[1]
    assert moved is not None
    moved.attach(LocalFileService())
    assert moved.resolve("/tmp/x").host == str(private / "x")  # the same /tmp after a move


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_writes_its_private_tmp(make_machine: MakeMachine, tmp_path: Path,
                                          engine: str) -> None:
    need("/usr/bin/touch")
    private = tmp_path / "private"
    private.mkdir()
    name = f"made-{uuid.uuid4().hex}"
    machine = make_machine(quantum_us=1000, engine=engine, memory_mib=128)
    spec = FileViewSpec(cwd=str(tmp_path), writable=(), tmp=str(private))
    pid = machine.exec(Path("/usr/bin/touch").read_bytes(), "touch",
                       ["/usr/bin/touch", f"/tmp/{name}"], files=spec)
    status, _, err, info = finish(machine, pid, timeout=300)
    assert (status, err) == (0, b""), info.exit_reason
    assert (private / name).exists() and not Path("/tmp", name).exists()


# --- memory enough -------------------------------------------------------------------------

def test_default_memory_is_sized_from_the_host() -> None:
    gib = 1 << 30
    assert default_memory_mib(1, available=24 * gib) == 12 * 1024  # half of what is free
    assert default_memory_mib(3, available=24 * gib) == 4 * 1024  # shared by the machines
    assert default_memory_mib(1, available=64 * gib) == 16 * 1024  # capped
    assert default_memory_mib(4, available=1 * gib) == 512  # never below the old default
    assert default_memory_mib(2) >= 512  # this host's


def test_running_out_of_memory_says_what_to_do() -> None:
    line = memory_message(137, "out of memory: no frame for the page at 0x7f0000", "m1", 512)
    assert "m1" in line and "512 MiB" in line and "--memory-mib" in line
    assert memory_message(137, "killed by signal 9", "m1", 512) == ""
    assert memory_message(0, "exited", "m0", 512) == ""
