"""Files through the system calls: Debian's busybox-static reading a file or a streamed
standard input on a machine (both engines), byte for byte as the same busybox natively; a read
blocked on stdin that migrates; a file written under the writable dir; EBADF without stdin."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from support.machines import finish, local_mover, run_on_machine, wait_state

from tender_ray.cli.execute import StdinPump
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec

if TYPE_CHECKING:
    from tender_ray.cluster import MachineHandle

BUSYBOX = Path("/usr/bin/busybox")
pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")


@pytest.fixture()
def text(tmp_path: Path) -> Path:
    lines = [f"{(i * 7919) % 1009:04d} line {i}\n" for i in range(3000)]
    path = tmp_path / "input.txt"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("engine", ["emulated", "auto"])
@pytest.mark.parametrize("applet", [["wc", "-l"], ["sort"], ["sha256sum"], ["cat"]])
def test_busybox_reads_a_file_as_natively(make_machine: Callable[..., Machine], text: Path,
                                          engine: str, applet: list[str]) -> None:
    native = subprocess.run([str(BUSYBOX), *applet, str(text)], capture_output=True,
                            check=True, timeout=30)
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = run_on_machine(machine, BUSYBOX, [*applet, str(text)])
    assert (status, err) == (0, b""), (err, info.exit_reason)
    assert out == native.stdout


def test_a_missing_file_answers_enoent(make_machine: Callable[..., Machine],
                                       tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing")
    native = subprocess.run([str(BUSYBOX), "cat", missing], capture_output=True, timeout=30)
    machine = make_machine(quantum_us=1000, engine="emulated")
    status, out, err, _ = run_on_machine(machine, BUSYBOX, ["cat", missing])
    assert (status, out) == (native.returncode, native.stdout)
    assert err.split(b":")[-1] == native.stderr.split(b":")[-1]  # "No such file or directory"


def _exec(machine: Machine, args: list[str], *, stdin: str = "empty",
          files: FileViewSpec | None = None) -> int:
    return machine.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), *args],
                        files=files, stdin=stdin)


@pytest.mark.parametrize("engine", ["emulated", "auto"])
@pytest.mark.parametrize("applet", [["wc", "-l"], ["sort"], ["sha256sum"], ["cat"]])
def test_stdin_streamed_in_pieces(make_machine: Callable[..., Machine], text: Path,
                                  engine: str, applet: list[str]) -> None:
    data = text.read_bytes()
    native = subprocess.run([str(BUSYBOX), *applet], input=data, capture_output=True,
                            check=True, timeout=30)
    machine = make_machine(quantum_us=1000, engine=engine)
    pid = _exec(machine, applet, stdin="stream")
    wait_state(machine, pid, "sleeping")  # blocked on the empty input, not spinning
    piece = len(data) // 5 + 1
    for i in range(0, len(data), piece):
        assert machine.feed_stdin(pid, data[i:i + piece]) <= len(data)
    machine.feed_stdin(pid, b"", eof=True)
    status, out, err, info = finish(machine, pid)
    assert (status, err) == (0, b""), (err, info.exit_reason)
    assert out == native.stdout


def test_stdin_from_a_file_in_the_view(make_machine: Callable[..., Machine],
                                       text: Path) -> None:
    native = subprocess.run([str(BUSYBOX), "sha256sum"], stdin=text.open("rb"),
                            capture_output=True, check=True, timeout=30)
    machine = make_machine(quantum_us=1000, engine="emulated")
    pid = _exec(machine, ["sha256sum"], stdin=str(text))
    assert finish(machine, pid)[1] == native.stdout


def test_unavailable_stdin_answers_ebadf(make_machine: Callable[..., Machine]) -> None:
    native = subprocess.run([str(BUSYBOX), "cat"], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=30, pass_fds=(),
                            preexec_fn=lambda: os.close(0))
    machine = make_machine(quantum_us=1000, engine="emulated")
    status, out, err, _ = finish(machine, _exec(machine, ["cat"], stdin="none"))
    assert (status, out, err) == (native.returncode, native.stdout, native.stderr)
    assert b"Bad file descriptor" in err


def test_a_blocked_read_migrates_then_finishes(make_machine: Callable[..., Machine],
                                               text: Path) -> None:
    data = text.read_bytes()
    native = subprocess.run([str(BUSYBOX), "sort"], input=data, capture_output=True,
                            check=True, timeout=30)
    a = make_machine(quantum_us=1000, engine="emulated", name="a")
    b = make_machine(quantum_us=1000, engine="emulated", name="b")
    pid = _exec(a, ["sort"], stdin="stream")
    wait_state(a, pid, "sleeping")
    a.feed_stdin(pid, data[:1000])  # part of it is in the buffer when it moves
    wait_state(a, pid, "sleeping", pred=lambda i: i.syscalls.get("read", 0) >= 3)
    local_mover()(a, pid, b)
    wait_state(b, pid, "sleeping")
    local_mover()(b, pid, a)
    local_mover()(a, pid, b)
    b.feed_stdin(pid, data[1000:], eof=True)
    status, out, err, info = finish(b, pid)
    assert (status, err) == (0, b""), (err, info.exit_reason)
    assert out == native.stdout
    assert len(info.migrations) == 3


def test_sort_writes_a_file_under_the_writable_dir(make_machine: Callable[..., Machine],
                                                    text: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    subprocess.run([str(BUSYBOX), "sort", "-o", str(out_dir / "native"), str(text)],
                   check=True, timeout=30)
    machine = make_machine(quantum_us=1000, engine="emulated")
    view = FileViewSpec(cwd=str(out_dir), writable=(str(out_dir),))
    status, _, err, _ = finish(machine, _exec(machine, ["sort", "-o", "guest", str(text)],
                                              files=view))
    assert (status, err) == (0, b"")
    assert (out_dir / "guest").read_bytes() == (out_dir / "native").read_bytes()
    status, _, err, _ = finish(machine, _exec(machine, ["sort", "-o", str(text), str(text)],
                                              files=view))
    assert status != 0 and b"Read-only file system" in err  # outside the writable dir


def test_the_exec_driver_streams_its_stdin(make_machine: Callable[..., Machine],
                                           text: Path) -> None:
    """cli/execute.py's pump: a pipe read in 64 KiB blocks, fed with back-pressure, EOF."""
    data = text.read_bytes() * 200  # > 1 MiB, so the guest's buffer fills and the pump waits
    native = subprocess.run([str(BUSYBOX), "sha256sum"], input=data, capture_output=True,
                            check=True, timeout=30)
    machine = make_machine(quantum_us=1000, engine="emulated")
    pid = _exec(machine, ["sha256sum"], stdin="stream")
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    pump = StdinPump(r)
    while machine.info(pid).state != "zombie":
        pump.feed(cast("MachineHandle", machine), pid)
        time.sleep(0.005)
    writer.join()
    os.close(r)
    assert pump.done
    assert finish(machine, pid)[1] == native.stdout
