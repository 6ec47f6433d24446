"""Home files without Ray: the remote file service over a direct link to a home (block reads
ahead, writes behind, what a process reads after it wrote, errors that come back late), and
busybox migrated to a machine with no host files of its own, reading and writing through its
home, byte for byte as natively."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.machines import bounce, finish, local_mover

from tender_ray.abi.linux import Errno
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec, LocalFileService
from tender_ray.resources.home_files import (
    DirectLink,
    FileOp,
    FileReply,
    FileRequest,
    HomeFiles,
    NoHostFiles,
    PendingReply,
    RemoteFileService,
)

BLOCK = 1 << 20
BUSYBOX = Path("/usr/bin/busybox")


def _remote(block: int = BLOCK) -> tuple[RemoteFileService, HomeFiles]:
    home = HomeFiles(LocalFileService())
    return RemoteFileService(DirectLink("home", home), block=block), home


def test_a_sequential_read_costs_a_request_per_block(tmp_path: Path) -> None:
    data = os.urandom(5 * BLOCK + 123)
    (tmp_path / "f").write_bytes(data)
    remote, home = _remote()
    h = remote.open(str(tmp_path / "f"), os.O_RDONLY, 0)
    got = bytearray()
    while part := remote.pread(h, 65536, len(got)):
        got += part
    remote.close(h)
    assert bytes(got) == data
    stats = remote.statistics()
    assert stats.reads == len(data) // 65536 + 2  # every piece, and the empty one at the end
    # open, close and one read per block (the first, and each read ahead): not one per call
    assert stats.requests <= 2 + 6 + 1
    assert stats.bytes_fetched == len(data)
    assert home.statistics().open_handles == 0


def test_a_read_across_a_block_boundary_is_whole(tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK)
    (tmp_path / "f").write_bytes(data)
    remote, _ = _remote()
    h = remote.open(str(tmp_path / "f"), os.O_RDONLY, 0)
    assert remote.pread(h, 4096, BLOCK - 100) == data[BLOCK - 100:BLOCK - 100 + 4096]
    assert remote.pread(h, 10, 3 * BLOCK - 4) == data[-4:]  # short only at the end
    assert remote.pread(h, 10, 3 * BLOCK + 5) == b""


def test_writes_go_behind_in_blocks_and_land_by_close(tmp_path: Path) -> None:
    remote, home = _remote()
    path = str(tmp_path / "out")
    h = remote.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    data = os.urandom(3 * BLOCK + 777)
    for at in range(0, len(data), 65536):
        assert remote.pwrite(h, data[at:at + 65536], at) == len(data[at:at + 65536])
    remote.close(h)
    assert Path(path).read_bytes() == data
    assert remote.statistics().requests <= 2 + 4  # open, close, one write per block
    assert home.statistics().bytes_written == len(data)


def test_a_process_reads_what_it_wrote(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    Path(path).write_bytes(b"a" * 100)
    remote, _ = _remote()
    w = remote.open(path, os.O_RDWR, 0)
    r = remote.open(path, os.O_RDONLY, 0)
    assert remote.pread(r, 10, 0) == b"a" * 10  # cached now
    remote.pwrite(w, b"XYZ", 2)
    assert remote.pread(w, 5, 0) == b"aaXYZ"  # its own handle: the write landed first
    assert remote.pread(r, 5, 0) == b"aaXYZ"  # another handle of the file: cache dropped
    remote.pwrite(w, b"tail", 100)
    assert remote.fstat(w).size == 104
    remote.pwrite(w, b"Q", 0)
    remote.ftruncate(w, 50)
    assert Path(path).read_bytes() == b"QaXYZ" + b"a" * 45


class _FailingWrites(DirectLink):
    """A home whose disk is full: writes answer ENOSPC."""

    def submit(self, request: FileRequest) -> PendingReply:
        if request.op is FileOp.PWRITE:
            reply = FileReply(errno=int(Errno.ENOSPC), message="No space left on device")
            return PendingReply(lambda: reply)
        return super().submit(request)


def test_a_write_behind_error_is_answered_by_the_next_call(tmp_path: Path) -> None:
    remote = RemoteFileService(_FailingWrites("home", HomeFiles(LocalFileService())), BLOCK)
    h = remote.open(str(tmp_path / "out"), os.O_WRONLY | os.O_CREAT, 0o644)
    assert remote.pwrite(h, b"x" * 10, 0) == 10  # gathered: nothing sent yet
    with pytest.raises(OSError) as caught:
        remote.fsync(h)
    assert caught.value.errno == Errno.ENOSPC
    remote.pwrite(h, b"y" * 10, 10)
    with pytest.raises(OSError) as caught:
        remote.close(h)
    assert caught.value.errno == Errno.ENOSPC


def test_errors_of_the_home_come_back_as_errno(tmp_path: Path) -> None:
    remote, _ = _remote()
    with pytest.raises(FileNotFoundError):
        remote.open(str(tmp_path / "missing"), os.O_RDONLY, 0)
    with pytest.raises(OSError) as caught:
        remote.pread(12345, 10, 0)
    assert caught.value.errno == Errno.EBADF
    none = NoHostFiles("m9")
    with pytest.raises(PermissionError, match="m9 has no host files"):
        none.open("/etc/hostname", os.O_RDONLY, 0)


def _text(path: Path, lines: int) -> Path:
    path.write_text("".join(f"{(i * 7919) % 100_003:06d} line {i}\n" for i in range(lines)))
    return path


def _linked(make_machine: Callable[..., Machine], engine: str) -> tuple[Machine, Machine]:
    home = make_machine(name="home", quantum_us=1000, engine=engine)
    away = make_machine(name="away", quantum_us=1000, engine=engine, host_files="none")
    homes = {"home": home}
    away.host_tree.link = lambda name: DirectLink(name, homes[name].host_tree.home)
    return home, away


@pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")
@pytest.mark.parametrize("engine", ["emulated", "auto"])
def test_a_migrated_process_reads_and_writes_through_its_home(
        make_machine: Callable[..., Machine], tmp_path: Path, engine: str) -> None:
    text = _text(tmp_path / "input.txt", 60_000 if engine == "auto" else 20_000)
    out = tmp_path / "sorted.txt"
    native = subprocess.run([str(BUSYBOX), "sort", "-o", str(tmp_path / "native.txt"),
                             str(text)], capture_output=True, check=True, timeout=60)
    home, away = _linked(make_machine, engine)
    with pytest.raises(OSError, match="no host files"):  # it has none of its own
        away.host_tree.local.lstat(str(text))
    view = FileViewSpec(cwd=str(tmp_path))
    pid = home.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), "sort", "-o", str(out),
                                                      str(text)], files=view)
    # (a native process frozen again within 2 ms of each resume barely runs: it would make
    # thousands of moves; every 30 ms still gives tens of them through the sort)
    where, records = bounce([home, away], pid, move=local_mover(),
                            pause=0.002 if engine == "emulated" else 0.03)
    status, stdout, err, info = finish([home, away][where], pid)
    assert (status, stdout, err) == (0, native.stdout, b""), info.exit_reason
    assert out.read_bytes() == (tmp_path / "native.txt").read_bytes()
    assert records, "it never moved"
    asked = away.statistics().host_files.remote
    served = home.statistics().host_files.served
    assert asked and asked[0].home == "home" and asked[0].requests > 0
    assert served.requests >= asked[0].requests and served.open_handles == 0


@pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")
def test_a_process_started_without_host_files_is_told_so(
        make_machine: Callable[..., Machine], tmp_path: Path) -> None:
    _, away = _linked(make_machine, "emulated")
    text = _text(tmp_path / "input.txt", 10)
    pid = away.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), "cat", str(text)],
                    files=FileViewSpec(cwd=str(tmp_path)))
    status, out, err, _ = finish(away, pid)
    assert status == 1 and out == b""
    assert b"Permission denied" in err


def test_links_symlinks_and_nodes_are_made_at_the_home(tmp_path: Path) -> None:
    remote, home = _remote()
    (tmp_path / "f").write_bytes(b"data")
    h = remote.open(str(tmp_path / "f"), os.O_WRONLY | os.O_APPEND, 0)
    remote.pwrite(h, b" more", 4)  # behind the process: the link sees it landed first
    remote.hardlink(str(tmp_path / "f"), str(tmp_path / "g"))
    remote.close(h)
    remote.symlink("../elsewhere", str(tmp_path / "s"))
    remote.mknod(str(tmp_path / "p"), 0o10600)
    remote.mknod(str(tmp_path / "r"), 0o100640)
    assert os.stat(tmp_path / "g").st_ino == os.stat(tmp_path / "f").st_ino
    assert (tmp_path / "g").read_bytes() == b"data more"
    assert os.readlink(tmp_path / "s") == "../elsewhere"  # as given
    assert stat.S_ISFIFO(os.lstat(tmp_path / "p").st_mode)
    assert stat.S_ISREG(os.lstat(tmp_path / "r").st_mode)
    with pytest.raises(OSError) as device:
        remote.mknod(str(tmp_path / "d"), 0o20600)
    assert device.value.errno == Errno.EPERM
    with pytest.raises(OSError) as exists:
        remote.symlink("x", str(tmp_path / "f"))
    assert exists.value.errno == Errno.EEXIST
    assert home.statistics().requests >= 6
    with pytest.raises(OSError, match="host_files: none") as none:
        NoHostFiles("m").hardlink(str(tmp_path / "f"), str(tmp_path / "h"))
    assert none.value.errno == Errno.EACCES
