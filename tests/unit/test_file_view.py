"""The file view's path resolution (escapes refused) and the descriptor table, on a tmp tree."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest

from tender_ray.abi.linux import Errno
from tender_ray.resources.file_view import FileView, FileViewSpec, LocalFileService
from tender_ray.resources.open_file import FdTable, HostFile, PipeBuffer, PipeEnd, StdinStream


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "home" / "work").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "data").write_bytes(b"etc data\n")
    (tmp_path / "outside").write_bytes(b"secret\n")
    os.symlink("/etc/data", root / "home" / "abs_link")  # absolute: relative to the view root
    os.symlink("/etc", root / "home" / "work" / "out_of_writable")
    os.symlink("../../../../../..", root / "home" / "up")
    return root


def view(root: Path) -> FileView:
    return FileView(FileViewSpec(root=str(root), cwd="/home/work"), LocalFileService(),
                    exe="/etc/data")


def errno_of(call: object) -> int:
    with pytest.raises(OSError) as e:
        call()  # type: ignore[operator]
    assert e.value.errno is not None
    return e.value.errno


def test_dotdot_chains_stop_at_the_root(tree: Path) -> None:
    v = view(tree)
    r = v.resolve("../../../../../../etc/data")
    assert r.guest == "/etc/data"
    assert Path(r.host or "").read_bytes() == (tree / "etc" / "data").read_bytes()
    assert v.resolve("/home/up/outside", follow_last=False).guest == "/outside"
    assert errno_of(lambda: v.resolve("/home/up/outside/x")) == Errno.ENOENT


def test_absolute_symlinks_stay_in_the_view(tree: Path) -> None:
    v = view(tree)
    assert v.resolve("/home/abs_link").host == str(tree / "etc" / "data")
    assert v.resolve("/home/abs_link", follow_last=False).guest == "/home/abs_link"


def test_proc_and_dev_do_not_escape(tree: Path) -> None:
    v = view(tree)
    assert errno_of(lambda: v.resolve("/proc/self/root/etc/passwd")) == Errno.EACCES
    assert errno_of(lambda: v.resolve("/proc/self/fd/0/etc")) == Errno.EACCES
    made = v.resolve("/proc/self/fd/0")  # made by the kernel from the process: no host path
    assert (made.proc, made.host) == ("self/fd/0", None)
    assert errno_of(lambda: v.resolve("/proc/self/../self/maps")) == Errno.EACCES
    assert errno_of(lambda: v.resolve("/dev/sda")) == Errno.ENOENT
    assert v.resolve("/dev/null").device == "null"
    assert v.resolve("/proc/self/exe").guest == "/etc/data"
    assert v.resolve("/home/../dev/./zero").device == "zero"


def test_relative_to_a_parent_directory(tree: Path) -> None:
    v = view(tree)
    assert v.resolve("etc/data", base="/").guest == "/etc/data"
    assert v.resolve("../../etc/data", base="/home/work").guest == "/etc/data"


def test_writes_only_under_the_writable_dirs(tree: Path) -> None:
    v = view(tree)
    v.check_writable(v.resolve("new_file"))  # the cwd is writable by default
    assert errno_of(lambda: v.check_writable(v.resolve("/etc/data"))) == Errno.EROFS
    link = v.resolve("out_of_writable/data")  # a symlink out of the writable dir
    assert link.guest == "/etc/data"
    assert errno_of(lambda: v.check_writable(link)) == Errno.EROFS
    assert errno_of(lambda: v.check_writable(v.resolve("../x"))) == Errno.EROFS
    assert errno_of(lambda: v.check_writable(v.resolve("/proc/self/exe"))) == Errno.EROFS


def test_dup_shares_the_offset_and_the_table_travels(tree: Path) -> None:
    service = LocalFileService()
    path = str(tree / "etc" / "data")
    native = Path(path).read_bytes()
    table = FdTable()
    stdin = StdinStream()
    assert table.install(stdin) == 0
    fd = table.install(HostFile("/etc/data", path, os.O_RDONLY,
                                service.open(path, os.O_RDONLY, 0), service))
    assert fd == 1
    dup = table.dup(fd, lowest=5)
    assert dup == 5
    assert table.get(fd).read(3) == native[:3]
    assert table.get(dup).read(100) == native[3:]
    moved = pickle.loads(pickle.dumps(table))
    moved.attach(LocalFileService())
    assert moved.get(1) is moved.get(5)
    assert moved.get(1).seek(0, os.SEEK_SET) == 0
    assert moved.get(5).read(100) == native
    copy.deepcopy(moved).close_all()
    table.close(1)
    assert table.get(5).pread(4, 0) == native[:4]  # still open through the dup
    assert errno_of(lambda: table.get(1)) == Errno.EBADF


def test_vanished_file_answers_enoent_after_arrival(tree: Path) -> None:
    service = LocalFileService()
    path = str(tree / "etc" / "data")
    table = FdTable()
    table.install(HostFile("/etc/data", path, os.O_RDONLY, service.open(path, 0, 0), service))
    blob = pickle.dumps(table)
    os.unlink(path)
    moved = pickle.loads(blob)
    moved.attach(LocalFileService())
    assert errno_of(lambda: moved.get(0).read(1)) == Errno.ENOENT


def test_pipe_and_stdin_wait_rather_than_spin() -> None:
    pipe = PipeBuffer()
    r, w = PipeEnd(pipe, False, 0), PipeEnd(pipe, True, 0)
    assert r.read(10) is None  # would block: a writer is open
    assert w.write(b"abc") == 3
    assert r.read(10) == b"abc"
    w.release()
    assert r.read(10) == b""
    r.release()
    w2 = PipeEnd(pipe, True, 0)
    assert errno_of(lambda: w2.write(b"x")) == Errno.EPIPE
    s = StdinStream()
    assert s.read(4) is None
    assert s.feed(b"12345", eof=False) == 5
    assert s.read(4) == b"1234"
    s.feed(b"", eof=True)
    assert s.read(4) == b"5"
    assert s.read(4) == b""
    assert errno_of(lambda: StdinStream(available=False).read(1)) == Errno.EBADF
    with pytest.raises(ValueError, match="at most"):
        StdinStream().feed(bytes((1 << 20) + 1), eof=False)
