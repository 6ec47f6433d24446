"""execve as a transform in place: the program is found as Linux finds it (the path through
the process's file view, `#!` scripts, the dynamic loader), its errors are Linux's, and what
Linux keeps across it (pid, descriptors without close-on-exec, ignored signals, the blocked
mask) is kept, on both engines and while the process moves over 3 machines across the call.
Debian's programs that exec (env, dash, busybox) print what they print natively."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from support.engines import ENGINES, NATIVE_OK, NATIVE_WHY
from support.machines import finish, local_mover, start_in
from support.programs import GUEST_TIMEOUT, NATIVE_TIMEOUT, native_in, need, workload

from tender_ray.errors import ProcessStateError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import exec_transform
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileView, FileViewSpec, LocalFileService

MakeMachine = Callable[..., Machine]
EVERY = 0.02  # seconds between two moves
ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}


def _tree(where: Path) -> Path:
    """The files `execchain` works with (see workloads/src/execchain.c)."""
    (where / "data").write_bytes(b"abcdefghijklmnopqrstuvwxyz\n")
    (where / "plain").write_text("not executable\n")
    (where / "text").write_text("neither ELF nor a script\n")
    (where / "text").chmod(0o755)
    (where / "script").write_text(f"#!{workload('execchain')}\n")
    (where / "script").chmod(0o755)
    lines = b"".join(b"%d line of text\n" % i for i in range(400_000))
    (where / "big.txt").write_bytes(lines)
    return where


def _bounce_watching(machines: Sequence[Machine], pid: int) -> list[str]:
    """Move `pid` round-robin until it ends; the process's name at each move (execve changes
    it), so a test sees on which side of the call the moves were."""
    names: list[str] = []
    where = 0
    while True:
        source = machines[where]
        info = source.info(pid)
        if info.state == "zombie":
            return names
        target = (where + 1) % len(machines)
        try:
            local_mover()(source, pid, machines[target])
        except ProcessStateError:  # it ended meanwhile (or, on a very busy host, could not
            # be frozen in time): it runs to its end where it is
            assert source.wait(pid, timeout=GUEST_TIMEOUT).state == "zombie"
            return names
        names.append(info.name)
        where = target
        time.sleep(EVERY)


def _where(machines: Sequence[Machine], pid: int) -> Machine:
    return next(m for m in machines if any(i.pid == pid for i in m.list_processes()))


@pytest.mark.parametrize("engine", ENGINES)
def test_execve_keeps_what_linux_keeps_while_moving(make_machine: MakeMachine, tmp_path: Path,
                                                    engine: str) -> None:
    where = _tree(tmp_path)
    expected = None
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(3)]
    for work in ("20", "80", "320", "1280"):
        status, out, err = native_in("execchain", where, work)
        assert status == 3 and out.endswith(b"done\n"), err
        expected = (status, out, err)
        pid = start_in(machines[0], "execchain", where, work)
        names = _bounce_watching(machines, pid)
        got_status, got_out, got_err, info = finish(_where(machines, pid), pid)
        assert (got_status, got_out, got_err) == expected, info.exit_reason
        if {"execchain", "script"} <= set(names):
            return  # moved before and after the call: the case this test is for
    pytest.fail(f"never moved on both sides of execve, even at the largest work: {names}")


def test_execve_answers_linux_errors_without_a_cpu(tmp_path: Path) -> None:
    """`prepare` finds the program, or the errno Linux answers, before anything is lost."""
    _tree(tmp_path)
    (tmp_path / "loop").write_text(f"#!{tmp_path}/loop\n")
    (tmp_path / "loop").chmod(0o755)
    (tmp_path / "noloader").write_text("#!/nonexistent/interpreter\n")
    (tmp_path / "noloader").chmod(0o755)
    view = FileView(FileViewSpec(cwd=str(tmp_path), writable=()), LocalFileService())
    for path, want in (("missing", errno.ENOENT), ("plain", errno.EACCES),
                       ("text", errno.ENOEXEC), (".", errno.EACCES), ("", errno.ENOENT),
                       ("loop", errno.ELOOP), ("noloader", errno.ENOENT),
                       ("/dev/null", errno.EACCES)):
        with pytest.raises(OSError) as caught:
            exec_transform.prepare(view, path, [b"x"], [])
        assert caught.value.errno == want, (path, caught.value)
    new = exec_transform.prepare(view, "./script", [b"zero", b"one"], [b"A=1"])
    assert new.argv == [str(workload("execchain")).encode(), b"./script", b"one"]
    assert (new.comm, new.exe, new.envp) == ("script", str(workload("execchain")), [b"A=1"])
    with pytest.raises(OSError) as caught:
        exec_transform.prepare(view, "./script", [b"x", b"a" * vm.ARG_MAX], [])
    assert caught.value.errno == errno.E2BIG


# --- Debian's programs that exec, natively and moving over 3 machines --------------------

CASES: dict[str, tuple[str, ...]] = {
    "env-printenv": ("/usr/bin/env", "X=1", "printenv", "X"),
    "sh-exec-cat": ("/bin/sh", "-c", "exec cat big.txt"),
    "busybox-env": ("/bin/busybox", "env", "Y=2", "/bin/busybox", "env"),
    "sh-exec-missing": ("/bin/sh", "-c", "echo before; exec nosuch"),
    "sh-exec-not-executable": ("/bin/sh", "-c", "echo before; exec ./plain"),
    # ENOEXEC: dash runs the file as a script of its own (execve of /bin/sh with it)
    "sh-exec-text": ("/bin/sh", "-c", "echo before; exec ./text"),
    "sh-exec-script": ("/bin/sh", "-c", "exec ./script after 0 0 0 0"),
}


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
@pytest.mark.parametrize("name", list(CASES))
def test_debian_programs_that_exec(make_machine: MakeMachine, tmp_path: Path,
                                   name: str) -> None:
    argv = CASES[name]
    need(argv[0])
    where = _tree(tmp_path)
    native = subprocess.run(argv, capture_output=True, env=ENV, cwd=where, check=False,
                            stdin=subprocess.DEVNULL, timeout=NATIVE_TIMEOUT)
    assert native.stdout, native.stderr
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine="native", memory_mib=256)
                for i in range(3)]
    pid = machines[0].exec(Path(argv[0]).read_bytes(), Path(argv[0]).name, list(argv),
                           [f"{k}={v}" for k, v in ENV.items()],
                           files=FileViewSpec(cwd=os.fspath(where), writable=()),
                           stdin="/dev/null")
    names = _bounce_watching(machines, pid)
    status, out, err, info = finish(_where(machines, pid), pid)
    assert (status, out) == (native.returncode, native.stdout), (info.exit_reason, err)
    assert err == native.stderr
    assert names, "it ended before its first move"
