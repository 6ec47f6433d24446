"""The file calls on names (kernel/syscalls/file_tree.py) through Debian's busybox-static on a
machine, each run compared with the same busybox natively on a copy of the same tree: gzip -k (open,
fchmod, utimensat, fchown, unlink of nothing), ls (getdents64, statx/lstat, readlink), mkdir,
mv and rm (mkdir, rename, unlinkat with AT_REMOVEDIR), and EROFS outside the writable dir."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import finish, run_on_machine
from support.programs import need, run_native

from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.open_file import MAX_FDS

BUSYBOX = Path("/usr/bin/busybox")
pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")
MakeMachine = Callable[..., Machine]


def _tree(root: Path) -> None:
    """The same small tree in each run's directory (same contents, same times)."""
    root.mkdir()
    (root / "data.txt").write_bytes(b"".join(b"%05d some words to squeeze\n" % (i * 31 % 977)
                                             for i in range(4000)))
    (root / "sub").mkdir()
    (root / "sub" / "empty").write_bytes(b"")
    (root / "link").symlink_to("data.txt")
    for p in (root / "data.txt", root / "sub" / "empty"):
        shutil.copystat(root / "data.txt", p)


def _native(cwd: Path, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BUSYBOX), *args], cwd=cwd, capture_output=True, timeout=30)


def _guest(machine: Machine, cwd: Path, args: list[str]) -> tuple[int, bytes, bytes]:
    view = FileViewSpec(cwd=str(cwd), writable=(str(cwd),))
    pid = machine.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), *args], files=view)
    status, out, err, _ = finish(machine, pid)
    return status, out, err


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    native, guest = tmp_path / "native", tmp_path / "guest"
    _tree(native)
    _tree(guest)
    shutil.copystat(native / "data.txt", guest / "data.txt")
    return native, guest


@pytest.mark.parametrize("engine", ["emulated", "auto"])
def test_gzip_keep_as_natively(make_machine: MakeMachine, dirs: tuple[Path, Path],
                               engine: str) -> None:
    native_dir, guest_dir = dirs
    native = _native(native_dir, ["gzip", "-k", "data.txt"])
    status, out, err = _guest(make_machine(quantum_us=1000, engine=engine), guest_dir,
                              ["gzip", "-k", "data.txt"])
    assert (status, out, err) == (native.returncode, native.stdout, native.stderr)
    assert (guest_dir / "data.txt").exists()  # -k kept it
    assert (guest_dir / "data.txt.gz").read_bytes() == (native_dir / "data.txt.gz").read_bytes()
    plain = subprocess.run(["gzip", "-dc", str(guest_dir / "data.txt.gz")], capture_output=True,
                           check=True, timeout=30).stdout
    assert plain == (native_dir / "data.txt").read_bytes()
    # Its mode, and whether it took the input's time, are as natively.
    g, n = (guest_dir / "data.txt.gz").stat(), (native_dir / "data.txt.gz").stat()
    source = (native_dir / "data.txt").stat().st_mtime_ns
    assert (g.st_mode, g.st_mtime_ns == source) == (n.st_mode, n.st_mtime_ns == source)


@pytest.mark.parametrize("args", [["ls"], ["ls", "-a"], ["ls", "-l", "--color=never", "sub"],
                                  ["ls", "-R"], ["readlink", "link"], ["ls", "-L", "link"]])
def test_ls_as_natively(make_machine: MakeMachine, dirs: tuple[Path, Path],
                        args: list[str]) -> None:
    native_dir, guest_dir = dirs
    native = _native(native_dir, args)
    status, out, err = _guest(make_machine(quantum_us=1000, engine="emulated"), guest_dir, args)
    assert (status, out, err) == (native.returncode, native.stdout, native.stderr)


def test_mkdir_mv_rm_as_natively(make_machine: MakeMachine, dirs: tuple[Path, Path]) -> None:
    machine = make_machine(quantum_us=1000, engine="emulated")
    steps = [["mkdir", "-p", "a/b/c"], ["mv", "a/b", "moved"], ["mv", "data.txt", "d.txt"],
             ["rm", "-r", "a"], ["rm", "sub/empty"], ["rmdir", "sub"], ["rm", "nothing"],
             ["mkdir", "moved"], ["ls", "-R"]]
    native_dir, guest_dir = dirs
    for step in steps:
        native = _native(native_dir, step)
        status, out, err = _guest(machine, guest_dir, step)
        assert (status, out, err) == (native.returncode, native.stdout, native.stderr), step
    assert sorted(p.name for p in guest_dir.rglob("*")) == sorted(
        p.name for p in native_dir.rglob("*"))


def test_changes_outside_the_writable_dir_answer_erofs(make_machine: MakeMachine,
                                                       dirs: tuple[Path, Path]) -> None:
    native_dir, guest_dir = dirs
    machine = make_machine(quantum_us=1000, engine="emulated")
    view = FileViewSpec(cwd=str(guest_dir), writable=(str(guest_dir / "sub"),))
    for step in (["mkdir", "x"], ["rm", "data.txt"], ["mv", "data.txt", "sub/d"]):
        pid = machine.exec(BUSYBOX.read_bytes(), "busybox", [str(BUSYBOX), *step], files=view)
        status, _, err, _ = finish(machine, pid)
        assert status != 0 and b"Read-only file system" in err, (step, err)
    assert sorted(p.name for p in guest_dir.iterdir()) == sorted(
        p.name for p in native_dir.iterdir())


# --- Debian's dynamically linked programs, each engine --------------------------------------

@pytest.fixture()
def blob(tmp_path: Path) -> Path:
    """Something worth compressing: the start of a real program, and text."""
    path = tmp_path / "blob"
    path.write_bytes(Path("/usr/bin/busybox").read_bytes()[:150_000] + b"words " * 20_000)
    return path


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("program", [["/usr/bin/gzip", "-c"], ["/usr/bin/xz", "-T1", "-c"],
                                     ["/usr/bin/python3", "-S", "-c",
                                      "import sys, hashlib; d = open(sys.argv[1], 'rb').read(); "
                                      "print(len(d), hashlib.sha256(d).hexdigest())"]])
def test_a_debian_program_reads_a_file_as_natively(make_machine: MakeMachine, engine: str,
                                                   program: list[str], blob: Path) -> None:
    need(program[0])
    args = [*program[1:], str(blob)]
    native = run_native(program[0], args)
    status, out, err, _ = run_on_machine(make_machine(engine=engine, memory_mib=256),
                                         program[0], args, timeout=120)
    assert (status, out, err) == native


@pytest.mark.parametrize("engine", ENGINES)
def test_bc_as_natively(make_machine: MakeMachine, engine: str, tmp_path: Path) -> None:
    need("/usr/bin/bc")
    script = tmp_path / "calc.bc"
    script.write_text("scale=60\n4*a(1)\ne(1)\n2^200\nsqrt(2)\nquit\n")
    native = run_native("/usr/bin/bc", ["-lq", str(script)])
    status, out, err, _ = run_on_machine(make_machine(engine=engine, memory_mib=128),
                                         "/usr/bin/bc", ["-lq", str(script)])
    assert (status, out, err) == native


@pytest.mark.parametrize("engine", ENGINES)
def test_debian_gzip_keep_copies_times_as_natively(make_machine: MakeMachine, engine: str,
                                                   dirs: tuple[Path, Path]) -> None:
    """GNU gzip -k gives the .gz the input's mode and times (fchmod, fchown, utimensat)."""
    need("/usr/bin/gzip")
    native_dir, guest_dir = dirs
    native = subprocess.run(["/usr/bin/gzip", "-k", "data.txt"], cwd=native_dir, env={},
                            capture_output=True, timeout=30)
    view = FileViewSpec(cwd=str(guest_dir), writable=(str(guest_dir),))
    machine = make_machine(engine=engine, memory_mib=128)
    pid = machine.exec(Path("/usr/bin/gzip").read_bytes(), "gzip",
                       ["/usr/bin/gzip", "-k", "data.txt"], files=view)
    status, out, err, _ = finish(machine, pid)
    assert (status, out, err) == (native.returncode, native.stdout, native.stderr)
    assert (guest_dir / "data.txt.gz").read_bytes() == (native_dir / "data.txt.gz").read_bytes()
    g, n = (guest_dir / "data.txt.gz").stat(), (native_dir / "data.txt.gz").stat()
    assert (g.st_mode, g.st_mtime_ns) == (n.st_mode, n.st_mtime_ns)
    assert g.st_mtime_ns == (guest_dir / "data.txt").stat().st_mtime_ns  # utimensat's work
    # (atimes differ: reading each input moved its own atime, which gzip then copies)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("program", [
    ["/usr/bin/stat", "-c", "%n %s %i %a %X %Y %Z %h %u %g %F %t %T %D %B %b %o"],
    ["/usr/bin/ls", "-la", "--color=never", "--time-style=full-iso"],
    ["/usr/bin/readlink", "-f"]])
def test_coreutils_statx_and_getdents_as_natively(make_machine: MakeMachine, engine: str,
                                                  program: list[str],
                                                  dirs: tuple[Path, Path]) -> None:
    """GNU stat and ls ask statx (the 256-byte struct), ls -a getdents64 with . and .."""
    need(program[0])
    tree = dirs[0]
    args = [*program[1:], str(tree), str(tree / "data.txt"), str(tree / "link"),
            str(tree / "sub")]
    native = run_native(program[0], args)
    status, out, err, _ = run_on_machine(make_machine(engine=engine, memory_mib=128),
                                         program[0], args)
    assert (status, out, err) == native


@pytest.mark.parametrize("engine", ENGINES)
def test_python_sees_its_ids_umask_limits_and_exe_as_natively(make_machine: MakeMachine,
                                                               engine: str,
                                                               tmp_path: Path) -> None:
    need("/usr/bin/python3")
    code = ("import os, resource, sys; os.chdir(sys.argv[1]); print(os.getuid(), os.geteuid(), "
            "os.getgid(), os.getegid(), os.getgroups()); print(oct(os.umask(0o077))); "
            "open('f', 'w').close(); os.mkdir('d'); print(oct(os.stat('f').st_mode), "
            "oct(os.stat('d').st_mode), oct(os.umask(0o022))); "
            "print(resource.getrlimit(resource.RLIMIT_STACK)); "
            "print(os.readlink('/proc/self/exe')); print(os.access('f', os.W_OK), "
            "os.access('f', os.X_OK), os.access('nothing', os.F_OK)); "
            "os.rename('f', 'g'); os.truncate('g', 5); print(os.stat('g').st_size, "
            "sorted(os.listdir('.'))); os.unlink('g'); os.rmdir('d'); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE))")
    results = []
    for where in ("native", "guest"):
        work = tmp_path / where
        work.mkdir()
        if where == "native":
            results.append(run_native("/usr/bin/python3", ["-S", "-c", code, str(work)]))
            continue
        view = FileViewSpec(cwd=str(work), writable=(str(work),))
        machine = make_machine(engine=engine, memory_mib=256)
        pid = machine.exec(Path("/usr/bin/python3").read_bytes(), "python3",
                           ["/usr/bin/python3", "-S", "-c", code, str(work)], files=view)
        results.append(finish(machine, pid, 120)[:3])
        assert list(work.iterdir()) == []
    # All as natively but the descriptor limit: the host's may be any; a guest's is the
    # descriptor table's size.
    (status, out, err), native = results[1], results[0]
    *same, nofile = out.splitlines()
    assert (status, same, err) == (native[0], native[1].splitlines()[:-1], native[2])
    assert nofile == str((MAX_FDS, MAX_FDS)).encode()
