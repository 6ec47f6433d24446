"""Debian's programs nobody here wrote, and the workloads for the calls they make, on the
native engine while they move over 3 machines every ~50 ms (what `tender-ray exec --machines
3 --migrate-every 0.05` does): GNU grep (a file, and a file as stdin), tar to stdout, gzip of
a redirected file, sort spilling its runs to the private /tmp, perl and python3 over large
files, sqlite3, jq, bzip2, python3's asyncio over epoll, eventfd and timerfd, python3's
select.select, inotify, advisory locks, /proc/self, and files that outlive their names
(unlinked, O_TMPFILE). Each
prints what the same command prints natively, byte for byte, with the same status — when
every machine reads the host's files, and when only the first does and the others reach
them through it (their home, `host_files: none`). Inputs are made here from a fixed seed."""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import bounce, finish, local_mover
from support.programs import NATIVE_TIMEOUT, need, workload

from tender_ray.kernel.machine import Machine
from tender_ray.kernel.syscalls.table import TABLE, Status
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import DirectLink

MakeMachine = Callable[..., Machine]
pytestmark = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)

EVERY = 0.05  # seconds between two moves, as `--migrate-every 0.05`
MEMORY_MIB = 512  # per machine; frames are taken as they are touched
GUEST_TIMEOUT = 600.0
ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
PYTHON = "/usr/bin/python3"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu")


def _text(rng: random.Random, size: int) -> bytes:
    """Lines of numbers and words, about `size` bytes."""
    lines: list[str] = []
    total = 0
    while total < size:
        line = (f"{rng.randrange(10**6)} {' '.join(rng.choices(WORDS, k=rng.randrange(2, 9)))}"
                f" {rng.randrange(10**4)}\n")
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs every case reads (read-only to the programs)."""
    where = tmp_path_factory.mktemp("inputs")
    rng = random.Random(18)
    (where / "text.txt").write_bytes(_text(rng, 2 << 20))
    (where / "ten.txt").write_bytes(_text(rng, 10 << 20))
    records = [{"id": i, "name": rng.choice(WORDS), "tags": rng.sample(WORDS, 3),
                "value": rng.randrange(-1000, 1000), "ok": rng.random() < 0.5}
               for i in range(40_000)]
    (where / "data.json").write_text(json.dumps(records))
    (where / "script.sql").write_text(SQL)
    return where


@pytest.fixture(scope="module")
def sixty(inputs: Path) -> Path:
    """A 60 MB text (the slow run's input), six different 10 MB parts."""
    path = inputs / "sixty.txt"
    if not path.exists():
        rng = random.Random(60)
        with path.open("wb") as out:
            for _ in range(6):
                out.write(_text(rng, 10 << 20))
    return path


SQL = """
CREATE TABLE t(id INTEGER PRIMARY KEY, word TEXT, n INTEGER);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 60000)
INSERT INTO t(word, n) SELECT 'w' || (i * 7919 % 613), i * 104729 % 100003 FROM c;
CREATE INDEX t_word ON t(word);
BEGIN;
UPDATE t SET n = n + 1 WHERE id % 3 = 0;
DELETE FROM t WHERE id % 11 = 0;
COMMIT;
SELECT count(*), sum(n), min(word), max(word) FROM t;
SELECT word, count(*), sum(n) FROM t GROUP BY word ORDER BY 3 DESC LIMIT 5;
VACUUM;
PRAGMA integrity_check;
"""

PERL = r"""
local $/;
my $all = <>;
my %count;
$count{$1}++ while $all =~ /([a-z]+)/g;
my ($sum, $lines) = (0, 0);
while ($all =~ /^(\d+)/mg) { $lines++; $sum += $1 }
print "$lines lines, sum $sum, ", length($all), " bytes\n";
print "$_ $count{$_}\n" for sort keys %count;
"""

PYTHON_DATA = """
import collections, hashlib, io, json, re, sys, zlib
with open(sys.argv[1], "rb") as f:
    data = f.read()
print(len(data), hashlib.sha256(data).hexdigest(), zlib.crc32(data))
words = collections.Counter(m.group() for m in re.finditer(rb"[a-z]+", data))
print(json.dumps(sorted((w.decode(), n) for w, n in words.items())))
lines = total = largest = 0
for line in io.BytesIO(data):
    first = int(line.split(None, 1)[0])
    lines, total, largest = lines + 1, total + first, max(largest, first)
print(lines, total, largest, len(zlib.compress(data[: 4 << 20], 6)))
"""

ASYNCIO = """
import asyncio, ctypes, os, struct

libc = ctypes.CDLL(None, use_errno=True)

class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

class Itimerspec(ctypes.Structure):
    _fields_ = [("interval", Timespec), ("value", Timespec)]

async def main():
    loop = asyncio.get_running_loop()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    posted = []
    all_in = loop.create_future()
    def on_event():
        posted.append(os.eventfd_read(efd))
        if sum(posted) == 60 and not all_in.done():
            all_in.set_result(None)
    loop.add_reader(efd, on_event)
    async def poster():
        for _ in range(20):
            os.eventfd_write(efd, 1)
            await asyncio.sleep(0.003)
    await asyncio.gather(*(poster() for _ in range(3)))
    await all_in
    print("eventfd", sum(posted))
    tfd = libc.timerfd_create(1, os.O_NONBLOCK)  # CLOCK_MONOTONIC
    every = Itimerspec(Timespec(0, 5_000_000), Timespec(0, 5_000_000))
    print("timerfd_settime", libc.timerfd_settime(tfd, 0, ctypes.byref(every), None))
    ticks = [0]
    enough = loop.create_future()
    def on_tick():
        ticks[0] += struct.unpack("Q", os.read(tfd, 8))[0]
        if ticks[0] >= 40 and not enough.done():
            enough.set_result(None)
    loop.add_reader(tfd, on_tick)
    await enough
    loop.remove_reader(tfd)
    print("timer ticked 40 times", ticks[0] >= 40)
    queue = asyncio.Queue()
    async def produce():
        for i in range(200):
            await queue.put(i)
            await asyncio.sleep(0)
        await queue.put(None)
    async def consume():
        total = 0
        while (item := await queue.get()) is not None:
            total += item
        return total
    print("queue", (await asyncio.gather(produce(), consume()))[1])
    start = loop.time()
    await asyncio.wait_for(asyncio.sleep(0.1), timeout=10)
    print("slept", loop.time() - start >= 0.099)

asyncio.run(main())
"""

INOTIFY = """
import ctypes, os, select, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
NAMES = {0x2: "MODIFY", 0x8: "CLOSE_WRITE", 0x40: "MOVED_FROM", 0x80: "MOVED_TO",
         0x100: "CREATE", 0x200: "DELETE"}
where = sys.argv[1]
fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
if fd < 0:
    sys.exit("inotify_init1: " + os.strerror(ctypes.get_errno()))
wd = libc.inotify_add_watch(fd, where.encode(), sum(NAMES))
print("watch", wd > 0)
ready = select.poll()
ready.register(fd, select.POLLIN)
for i in range(30):
    path = os.path.join(where, f"f{i}")
    with open(path, "wb") as f:
        f.write(b"x" * (i + 1))
    os.rename(path, path + ".done")
    os.unlink(path + ".done")
    seen = []
    while "DELETE" not in seen:
        ready.poll(10_000)
        data = os.read(fd, 4096)
        at = 0
        while at < len(data):
            _, mask, cookie, size = struct.unpack_from("iIII", data, at)
            name = data[at + 16:at + 16 + size].rstrip(b"\\0").decode()
            seen.append("|".join(v for k, v in NAMES.items() if mask & k))
            seen.append(name)
            at += 16 + size
    print(i, " ".join(seen))
"""

SELECT = """
import os, select, time
r, w = os.pipe()
print(select.select([r], [], [], 0), select.select([r], [w], [], 0)[1] == [w])
for i in range(40):
    os.write(w, b"x" * (i + 1))
    print(i, select.select([r], [], [], 5)[0] == [r], len(os.read(r, 1000)))
    start = time.monotonic()
    print(select.select([r], [], [r], 0.01), time.monotonic() - start >= 0.0099)
try:
    select.select([99], [], [], 0)
except OSError as e:
    print("closed", e.errno)
"""


@dataclass(frozen=True)
class Case:
    """One command: its argv (`{in}` the inputs' directory, `{dir}` the run's own one), the
    input given as its stdin (a name in the inputs, "" for /dev/null), the host programs it
    needs."""

    argv: tuple[str, ...]
    stdin: str = ""
    needs: tuple[str, ...] = ()
    memory_mib: int = MEMORY_MIB

    def args(self, inputs: Path, own: Path) -> list[str]:
        return [a.replace("{in}", str(inputs)).replace("{dir}", str(own)) for a in self.argv]


def _workload(name: str, *args: str) -> Case:
    return Case((str(workload(name)), *args))


CASES: dict[str, Case] = {
    "grep-file": Case(("/usr/bin/grep", "-n", "-E", "kilo (lima|zulu) [a-d]", "{in}/text.txt"),
                      needs=("/usr/bin/grep",)),
    "grep-count": Case(("/usr/bin/grep", "-c", "romeo", "{in}/ten.txt"),
                       needs=("/usr/bin/grep",)),
    "grep-stdin": Case(("/usr/bin/grep", "-E", "^9[0-9]* (echo|golf) "), stdin="text.txt",
                       needs=("/usr/bin/grep",)),
    "tar-stdout": Case(("/usr/bin/tar", "--sort=name", "-cf", "-", "-C", "{in}", "text.txt",
                        "data.json"), needs=("/usr/bin/tar",)),
    "gzip-stdin": Case(("/usr/bin/gzip", "-c"), stdin="text.txt", needs=("/usr/bin/gzip",)),
    "sort-spill": Case(("/usr/bin/sort", "-S", "64K", "--parallel=1", "-T", "/tmp", "-k", "2",
                        "{in}/text.txt"), needs=("/usr/bin/sort",)),
    "perl-10mb": Case(("/usr/bin/perl", "-e", PERL, "{in}/ten.txt"), needs=("/usr/bin/perl",)),
    "python3-stdlib": Case((PYTHON, "-c", PYTHON_DATA, "{in}/ten.txt"), needs=(PYTHON,)),
    "sqlite3": Case(("/usr/bin/sqlite3", "{dir}/db.sqlite"), stdin="script.sql",
                    needs=("/usr/bin/sqlite3",)),
    "jq": Case(("/usr/bin/jq", "-c", "group_by(.name) | map({name: .[0].name, n: length, "
                "sum: (map(.value) | add), ok: (map(select(.ok)) | length)})",
                "{in}/data.json"), needs=("/usr/bin/jq",)),
    "bzip2": Case(("/usr/bin/bzip2", "-c", "{in}/text.txt"), needs=("/usr/bin/bzip2",)),
    "asyncio": Case((PYTHON, "-c", ASYNCIO), needs=(PYTHON,)),
    "events": _workload("events", "20"),
    "select": Case((PYTHON, "-c", SELECT), needs=(PYTHON,)),
    "inotify": Case((PYTHON, "-c", INOTIFY, "{dir}"), needs=(PYTHON,)),
    "locks": _workload("locks", "{dir}", "all"),
    "proc-self": _workload("proc_self", "x", "y z"),
    "unlinked-and-tmpfile": _workload("file_objects", "{dir}", "30"),
}


def _inotify_served() -> str:
    """Why inotify cannot be checked here ("" when the kernel serves it)."""
    entry = next(e for e in TABLE.values() if e.name == "inotify_init1")
    if entry.status is Status.NOT:
        return f"inotify_init1 is not served yet ({entry.note})"
    return ""


def _native(case: Case, inputs: Path, own: Path) -> tuple[int, bytes, bytes]:
    with (inputs / case.stdin if case.stdin else Path(os.devnull)).open("rb") as stdin:
        done = subprocess.run(case.args(inputs, own), stdin=stdin, capture_output=True,
                              env=ENV, cwd=inputs, timeout=NATIVE_TIMEOUT * 4, check=False)
    return done.returncode, done.stdout, done.stderr


def _machines(make_machine: MakeMachine, through_home: bool, memory_mib: int
              ) -> list[Machine]:
    """Three machines of this process; with `through_home`, the two after the first have no
    host files and reach them through the first (the home of every process started there)."""
    home = make_machine(name="m0", quantum_us=1000, engine="native", memory_mib=memory_mib)
    machines = [home]
    for i in (1, 2):
        other = make_machine(name=f"m{i}", quantum_us=1000, engine="native",
                             memory_mib=memory_mib,
                             host_files="none" if through_home else "node")
        if through_home:
            other.host_tree.link = lambda name: DirectLink(name, home.host_tree.home)
        machines.append(other)
    return machines


def _guest(machines: list[Machine], case: Case, inputs: Path, own: Path, tmp: Path
           ) -> tuple[int, bytes, bytes, int, str]:
    """Run `case` on machines[0], moved round-robin every EVERY seconds until it ends:
    (status, stdout, stderr, moves, how it ended)."""
    argv = case.args(inputs, own)
    image = Path(argv[0]).read_bytes()
    view = FileViewSpec(cwd=str(inputs), writable=(str(own),), tmp=str(tmp))
    pid = machines[0].exec(image, Path(argv[0]).name, argv,
                           [f"{k}={v}" for k, v in ENV.items()], files=view,
                           stdin=str(inputs / case.stdin) if case.stdin else "/dev/null")
    at, records = bounce(machines, pid, move=local_mover(), pause=EVERY)
    status, out, err, info = finish(machines[at], pid, timeout=GUEST_TIMEOUT)
    return status, out, err, len(records), info.exit_reason


def _dirs(tmp_path: Path) -> Iterator[Path]:
    for name in ("native", "guest", "tmp"):
        (tmp_path / name).mkdir()
        yield tmp_path / name


def _compare(make_machine: MakeMachine, inputs: Path, tmp_path: Path, case: Case,
             through_home: bool) -> None:
    need(*case.needs)
    native_dir, guest_dir, tmp = _dirs(tmp_path)
    status, out, err = _native(case, inputs, native_dir)
    assert out, f"the native run printed nothing: nothing to compare ({err!r})"
    machines = _machines(make_machine, through_home, case.memory_mib)
    got_status, got_out, got_err, moves, reason = _guest(machines, case, inputs, guest_dir,
                                                         tmp)
    assert moves >= 1, "it ended before it moved"
    assert (got_status, got_out) == (status, out), (reason, got_err[-2000:])
    assert got_err == err


def _params() -> list[object]:
    why = _inotify_served()
    return [pytest.param(name, id=name, marks=pytest.mark.skip(reason=why))
            if name == "inotify" and why else pytest.param(name, id=name) for name in CASES]


@pytest.mark.parametrize("name", _params())
def test_identical_while_moving(make_machine: MakeMachine, inputs: Path, tmp_path: Path,
                                name: str) -> None:
    _compare(make_machine, inputs, tmp_path, CASES[name], through_home=False)


@pytest.mark.parametrize("name", _params())
def test_identical_through_their_home(make_machine: MakeMachine, inputs: Path,
                                      tmp_path: Path, name: str) -> None:
    _compare(make_machine, inputs, tmp_path, CASES[name], through_home=True)


SIXTY = Case((PYTHON, "-c", PYTHON_DATA, "{in}/sixty.txt"), needs=(PYTHON,), memory_mib=1024)


@pytest.mark.slow
@pytest.mark.parametrize("through_home", [False, True], ids=["host-files", "through-home"])
def test_python3_over_60_mb(make_machine: MakeMachine, inputs: Path, sixty: Path,
                            tmp_path: Path, through_home: bool) -> None:
    _compare(make_machine, inputs, tmp_path, SIXTY, through_home)
