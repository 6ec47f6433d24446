"""The system-call-heavy benchmark: real programs that read and write through the machine's
file calls, run natively and on a Tender machine of each engine, side by side.

Cases: Debian's `sha256sum` of a generated file (`--size` MiB), `gzip -c -1` of that file as
its standard input, `dd bs=4k` of it to standard output, a line-by-line `python3` read of it
(hashing each line), `sha256sum` again with the process migrated once to a second machine of
the same engine as soon as it has started, so every read after the move goes through the
descriptors the destination reopened, and each program migrated back and forth between the
two machines every 50 ms. Home I/O: the same
migrated read when the second machine has no file system of the first (`host_files: home`),
so every read after the move is fetched from the process's home in 4 MiB blocks, read ahead —
once over a direct link in this process (the deputy's own cost) and once between two machine
actors of an embedded Ray (`--no-ray` skips it), through Ray's object store as between nodes.
Each round runs the native program and then each engine, so host load hits all columns alike;
the best of `--repeat` rounds is kept and every output is checked against the native one.
Besides wall time, CPU time is compared (the program's, natively; on an in-process machine,
this process's threads -- tracers, handlers -- plus the guest's own), which a loaded host
distorts far less. `--calls` adds one call's cost (getppid, clock_gettime) natively and per
engine, and one stop's through ptrace against seccomp user notification:

    tender-ray bench io [--size 256] [--engines native,emulated] [--repeat 3] [--no-ray]
                        [--calls 20000] [--only-calls] [--no-direct-files] [--no-output-pipes]
                        [--json out.json]

`--no-direct-files` makes the native engine mediate every call, as before it held read-only
files as real host descriptors (engines/native/direct_files.py): the column to compare with;
`--no-output-pipes` mediates only the writes to standard output and error, as before they
were host pipes (engines/native/output_pipes.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tender_ray.bench.options import DEFAULT_ENGINES, usable_engines
from tender_ray.config import Engine, HostFiles, MachineConfig
from tender_ray.engines.native import direct_files, output_pipes
from tender_ray.errors import ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.protocol import migrate_local
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import DirectLink
from tender_ray.resources.process import ProcessState

if TYPE_CHECKING:
    from tender_ray.cluster import MachineHandle

WAIT_TIMEOUT = 3600.0
TARGET_RATIO = 1.5  # what the native engine aims at on these cases


SHA256SUM = "/usr/bin/sha256sum"


PYTHON3 = "/usr/bin/python3"
# CPython reading a file line by line: a read per 8 KiB and, around each `hashlib` update that
# releases the GIL, clock reads (68,077 on 16 MB) -- natively answered by the vDSO.
PY_LINES = ("import hashlib, sys\nh = hashlib.sha256()\n"
            "for line in open(sys.argv[1], 'rb'):\n    h.update(line)\nprint(h.hexdigest())")
PINGPONG_MS = 50  # the `migrated every` cases move the process this often
FOLLOW_S = 0.02  # and take its output this often, as `tender-ray exec` polls
_ENDED = frozenset({ProcessState.ZOMBIE.value})


def _cases(data: Path) -> list[tuple[str, str, list[str], str | None, int]]:
    """(label, program, args, stdin file, migrations: 0 none, -1 once, N every N ms)."""
    return [("sha256sum FILE", SHA256SUM, [str(data)], None, 0),
            ("gzip -c -1 <FILE", "/usr/bin/gzip", ["-c", "-1"], str(data), 0),
            ("dd if=FILE bs=4k (to stdout)", "/usr/bin/dd", [f"if={data}", "bs=4k",
                                                            "status=none"], None, 0),
            ("python3 line-by-line read", PYTHON3, ["-c", PY_LINES, str(data)], None, 0),
            ("sha256sum FILE, migrated", SHA256SUM, [str(data)], None, -1),
            (f"sha256sum FILE, migrated every {PINGPONG_MS} ms", SHA256SUM, [str(data)], None,
             PINGPONG_MS),
            (f"gzip -c -1 <FILE, migrated every {PINGPONG_MS} ms", "/usr/bin/gzip",
             ["-c", "-1"], str(data), PINGPONG_MS),
            (f"dd bs=4k, migrated every {PINGPONG_MS} ms", "/usr/bin/dd",
             [f"if={data}", "bs=4k", "status=none"], None, PINGPONG_MS),
            (f"python3 line-by-line, migrated every {PINGPONG_MS} ms", PYTHON3,
             ["-c", PY_LINES, str(data)], None, PINGPONG_MS)]


class _Runner(Protocol):
    """What a run needs of a machine: a `Machine`, or a `MachineHandle` of an actor."""

    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = (), *, files: FileViewSpec | None = None,
             stdin: str = "empty") -> int: ...
    def info(self, pid: int) -> ProcessInfo: ...
    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo: ...
    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]: ...


def _native(program: str, args: list[str], stdin: str | None
            ) -> tuple[float, int, bytes, float]:
    """One host run: (wall seconds, status, stdout, CPU seconds of the program)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(stdin or os.devnull, "rb") as source:
        done = subprocess.run([program, *args], stdin=source, capture_output=True,
                              check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, done.returncode, done.stdout, cpu


def _tender(machines: tuple[_Runner, _Runner], program: str, args: list[str],
            stdin: str | None, migrate: int,
            move: Callable[[int], float] | None = None
            ) -> tuple[float, int | None, bytes, float, float]:
    """One run: (seconds from exec to exit, status, stdout, longest migration seconds or 0,
    CPU seconds: this process's threads -- the machines' tracers and handlers -- and the
    guest's own; meaningful only for in-process machines, the load being the same).
    `migrate`: 0 never, -1 once from the first machine to the second as soon as it has
    started (`move(pid)` does that, default in-process), N > 0 back and forth every N ms
    until it ends (in-process machines only)."""
    first, second = machines
    image = Path(program).read_bytes()
    view = FileViewSpec(cwd=os.getcwd(), writable=())
    cpu_start = time.process_time()
    start = time.perf_counter()
    pid = first.exec(image, Path(program).name, [program, *args], files=view,
                     stdin=stdin or "empty")
    where, moved = first, 0.0
    taken: list[bytes] = []  # output a follower took while it ran
    if migrate == -1:
        time.sleep(0.02)  # it has started reading
        try:
            if move is None:
                assert isinstance(first, Machine) and isinstance(second, Machine)
                moved = migrate_local(first, pid, second).seconds
            else:
                moved = move(pid)
            where = second
        except ProcessStateError:  # it ended first (a small file): it stays, 0 s of moving
            pass
    elif migrate > 0:
        assert isinstance(first, Machine) and isinstance(second, Machine)
        there: Machine = second
        here: Machine = first
        # Followed as `tender-ray exec` follows it: its output taken every FOLLOW_S.
        next_move = time.monotonic() + migrate / 1000
        while True:
            time.sleep(min(FOLLOW_S, max(0.0, next_move - time.monotonic())))
            taken.append(here.take_output(pid)[0])
            if here.info(pid).state in _ENDED:
                break
            if time.monotonic() < next_move:
                continue
            try:
                moved = max(moved, migrate_local(here, pid, there).seconds)
            except ProcessStateError:  # it ended meanwhile
                break
            here, there = there, here
            next_move = time.monotonic() + migrate / 1000
        where = here
    info = where.wait(pid, timeout=WAIT_TIMEOUT)
    seconds = time.perf_counter() - start
    info, out, _err = where.reap(pid)
    out = b"".join(taken) + out
    cpu = time.process_time() - cpu_start + info.cpu_seconds
    return seconds, info.exit_status, out, moved, cpu


def _column(engine: str, runs: list[tuple[float, int | None, bytes, float, float]],
            native: list[tuple[float, int, bytes, float]]) -> dict[str, Any]:
    best, best_native = min(r[0] for r in runs), min(n[0] for n in native)
    cpu, cpu_native = min(r[4] for r in runs), min(n[3] for n in native)
    return {"engine": engine, "best_s": round(best, 4), "ratio": round(best / best_native, 3),
            "cpu_s": round(cpu, 4),
            "cpu_ratio": round(cpu / cpu_native, 3) if cpu_native > 0 else None,
            "migration_s": round(max(r[3] for r in runs), 4),
            "identical": all((r[1], r[2]) == native[0][1:3] for r in runs)}


def _home_pair(engine: str) -> tuple[Machine, Machine]:
    """Two machines where the second has no files of the first's: it reaches them over a
    direct link to the first's home side."""
    home = Machine(MachineConfig(name=f"io-{engine}-home", engine=Engine(engine),
                                 computations=1, memory_mib=256))
    away = Machine(MachineConfig(name=f"io-{engine}-away", engine=Engine(engine),
                                 computations=1, memory_mib=256, host_files=HostFiles.HOME),
                   pid_base=600_000)
    away.host_tree.link = lambda name: DirectLink(name, home.host_tree.home)
    return home, away


def ray_home_runs(engines: Sequence[str], data: Path, repeat: int
              ) -> dict[str, list[tuple[float, int | None, bytes, float, float]]]:
    """The migrated sha256sum between two machine actors of an embedded Ray, the second
    reaching the first's files only through its actor (`host_files: home`)."""
    from tender_ray.cluster import Cluster

    cluster = Cluster(num_cpus=2, object_store_mib=512, prefix="bench-io-")
    try:
        runs = {}
        for engine in engines:
            home = cluster.add_machine(MachineConfig(
                name=f"io-{engine}-ray-home", engine=Engine(engine), memory_mib=256))
            away = cluster.add_machine(MachineConfig(
                name=f"io-{engine}-ray-away", engine=Engine(engine), memory_mib=256,
                host_files=HostFiles.HOME))

            def move(pid: int, home: MachineHandle = home, away: MachineHandle = away) -> float:
                return home.migrate(pid, away.name, MigrationOptions(), timeout=600).seconds
            runs[engine] = [_tender((home, away), SHA256SUM, [str(data)], None, -1, move)
                            for _ in range(repeat)]
        return runs
    finally:
        cluster.shutdown()


def io_benchmark(size_mib: int = 256, engines: Sequence[str] = ("native", "emulated"),
                 repeat: int = 3, ray: bool = True) -> dict[str, Any]:
    """Run time ÷ native per case and engine (see the module's docstring)."""
    for program in ("/usr/bin/sha256sum", "/usr/bin/gzip", "/usr/bin/dd", PYTHON3):
        if not Path(program).is_file():
            raise FileNotFoundError(f"{program} is not installed (Debian: coreutils, gzip, "
                                    "python3)")
    with tempfile.TemporaryDirectory(prefix="tender-bench-io-") as tmp:
        data = Path(tmp) / "data"
        with data.open("wb") as f:  # compressible but not trivial: text with random words
            block = b"".join(os.urandom(8).hex().encode() + b" \n"[i % 2:i % 2 + 1]
                             for i in range(4096))
            for _ in range(size_mib * (1 << 20) // len(block) + 1):
                f.write(block)
        pairs = {e: (Machine(MachineConfig(name=f"io-{e}-a", engine=Engine(e),
                                           computations=1, memory_mib=256)),
                     Machine(MachineConfig(name=f"io-{e}-b", engine=Engine(e),
                                           computations=1, memory_mib=256),
                             pid_base=500_000))
                 for e in engines}
        rows: list[dict[str, Any]] = []
        try:
            for label, program, args, stdin, migrate in _cases(data):
                native = [_native(program, args, stdin) for _ in range(repeat)]
                columns = {engine: _column(pair[0].engine, [
                    _tender(pair, program, args, stdin, migrate) for _ in range(repeat)],
                    native) for engine, pair in pairs.items()}
                rows.append({"case": label, "native_s": round(min(n[0] for n in native), 4),
                             "native_cpu_s": round(min(n[3] for n in native), 4),
                             "engines": columns})
            native = [_native(SHA256SUM, [str(data)], None) for _ in range(repeat)]
            columns = {}
            for engine, pair in list(pairs.items()):
                home_pair = _home_pair(engine)
                pairs[f"{engine}-home"] = home_pair  # stopped with the others
                columns[engine] = _column(pair[0].engine, [
                    _tender(home_pair, SHA256SUM, [str(data)], None, -1)
                    for _ in range(repeat)], native)
            rows.append({"case": "sha256sum FILE, migrated, home I/O (direct)",
                         "native_s": round(min(n[0] for n in native), 4), "engines": columns})
            if ray:
                runs = ray_home_runs(list(engines), data, repeat)
                ray_columns = {e: _column(pairs[e][0].engine, r, native)
                               for e, r in runs.items()}
                for column in ray_columns.values():  # the machines' threads are elsewhere
                    column["cpu_s"] = column["cpu_ratio"] = None
                rows.append({"case": "sha256sum FILE, migrated, home I/O (Ray actors)",
                             "native_s": round(min(n[0] for n in native), 4),
                             "engines": ray_columns})
        finally:
            for pair in pairs.values():
                for machine in pair:
                    machine.stop()
    local = rows[4]["engines"]  # the same migrated read, its files opened where it runs
    for row in rows[len(_cases(Path())):]:  # what going home costs over that
        for engine, column in row["engines"].items():
            column["vs_local"] = round(column["best_s"] / local[engine]["best_s"], 3)
    return {"size_mib": size_mib, "repeat": repeat, "engines": list(engines), "rows": rows}


CALLCOST = "callcost"  # the workload: N getppid or clock_gettime calls in a loop


def _per_call_ns(stderr: bytes) -> float:
    """The loop's own time per call, as `callcost` reports it on standard error."""
    text = stderr.decode(errors="replace").strip().splitlines()
    if not text or not text[-1].endswith(" ns per call"):
        raise RuntimeError(f"{CALLCOST} did not report its time per call: {stderr!r}")
    return float(text[-1].split()[0])


def call_costs(engines: Sequence[str], calls: int = 20_000, repeat: int = 3) -> dict[str, Any]:
    """Microseconds per call of `getppid` (always mediated) and `clock_gettime(CLOCK_MONOTONIC)`
    (the vDSO natively), natively and per engine: the loop's own time over its calls as the
    program measures it (starting the program not counted), best of `repeat`; plus the stop
    alone, ptrace against seccomp user notification (`stopcost`)."""
    from tender_ray.config import workloads_dir
    from tender_ray.engines.native import stopcost

    program = workloads_dir() / CALLCOST
    if not program.is_file():
        raise FileNotFoundError(f"{program} is missing: build the workloads (make -C workloads)")
    image = program.read_bytes()
    fast = calls * 50  # loops of calls that take no stop: long enough to time
    rows: dict[str, Any] = {}
    for kind in ("getppid", "clock"):
        def native_run(kind: str = kind) -> float:
            done = subprocess.run([str(program), kind, str(fast)], capture_output=True,
                                  check=True)
            return _per_call_ns(done.stderr)
        row: dict[str, Any] = {"native_us": round(min(native_run() for _ in range(repeat))
                                                  / 1000, 4)}
        for engine in engines:
            n = fast if (engine, kind) == ("native", "clock") else calls
            machine = Machine(MachineConfig(name=f"calls-{engine}", engine=Engine(engine),
                                            computations=1, memory_mib=64))
            try:
                def run(machine: Machine = machine, kind: str = kind, n: int = n) -> float:
                    pid = machine.exec(image, CALLCOST, [CALLCOST, kind, str(n)])
                    machine.wait(pid, timeout=WAIT_TIMEOUT)
                    info, out, err = machine.reap(pid)
                    if info.exit_status != 0 or b"backwards: 0" not in out:
                        raise RuntimeError(f"{CALLCOST} {kind} on {machine.engine}: {out!r}")
                    return _per_call_ns(err)
                per = min(run() for _ in range(repeat)) / 1000
            finally:
                machine.stop()
            base = row["native_us"]
            row[engine] = {"us": round(per, 4), "calls": n,
                           "ratio": round(per / base, 2) if base else None}
        rows[kind] = row
    cost = stopcost.measure(program, calls, repeat)
    return {"calls": calls, "rows": rows, "stop": {
        "ptrace_us": cost.ptrace_us, "user_notif_us": cost.user_notif_us,
        "user_notif_sync_wake_us": cost.user_notif_sync_us, "native_us": cost.native_us,
        "notes": cost.notes}}


def print_call_costs(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    engines = [k for k in next(iter(result["rows"].values())) if k != "native_us"]
    table = Table(title="one call, microseconds (the loop's own time over its calls, best run)")
    table.add_column("call")
    table.add_column("native µs", justify="right")
    for engine in engines:
        table.add_column(f"{engine} µs", justify="right")
        table.add_column(f"{engine} ÷ native", justify="right")
    for kind, row in result["rows"].items():
        cells = [kind, f"{row['native_us']:.4f}"]
        for engine in engines:
            ratio = row[engine]["ratio"]
            cells += [f"{row[engine]['us']:.4f}", "-" if ratio is None else f"{ratio:.2f}"]
        table.add_row(*cells)
    Console().print(table)
    stop = result["stop"]
    Console().print(f"a mediated getppid, the stop alone (supervisor in Python): ptrace "
                    f"{stop['ptrace_us']:.2f} µs, seccomp user notification "
                    f"{stop['user_notif_us']:.2f} µs (synchronous wake-up "
                    f"{stop['user_notif_sync_wake_us']:.2f} µs), native {stop['native_us']:.3f} µs"
                    + (f" ({stop['notes']})" if stop["notes"] else ""))


def print_io_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"system-call-heavy programs, {result['size_mib']} MiB, "
                        f"best of {result['repeat']}")
    table.add_column("case")
    table.add_column("native s", justify="right")
    for engine in result["engines"]:
        table.add_column(f"{engine} s", justify="right")
        table.add_column(f"{engine} ÷ native", justify="right")
        table.add_column(f"{engine} CPU ÷ native", justify="right")
    for row in result["rows"]:
        cells = [row["case"], f"{row['native_s']:.3f}"]
        for engine in result["engines"]:
            c = row["engines"][engine]
            same = "" if c["identical"] else " (output DIFFERS)"
            home = f" ({c['vs_local']:.2f} of local)" if "vs_local" in c else ""
            cpu = c.get("cpu_ratio")
            cells += [f"{c['best_s']:.3f}", f"{c['ratio']:.2f}{home}{same}",
                      "-" if cpu is None else f"{cpu:.2f}"]
        table.add_row(*cells)
    Console().print(table)


def main(argv: Sequence[str] | None = None, prog: str = "python -m tender_ray.bench.io") -> int:
    """The command line; exit status 1 when an output differs from the native run's."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, metavar="MIB",
                        help="size of the generated input file")
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help="engines to compare, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    parser.add_argument("--no-ray", action="store_true",
                        help="skip the home I/O case between Ray machine actors")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    parser.add_argument("--calls", type=int, default=20_000, metavar="N",
                        help="per-call costs (getppid, clock_gettime, the stop alone) from "
                             "loops of N calls (0: skip)")
    parser.add_argument("--only-calls", action="store_true",
                        help="measure only the per-call costs")
    parser.add_argument("--no-direct-files", action="store_true",
                        help="the native engine mediates every call (no real descriptors)")
    parser.add_argument("--no-output-pipes", action="store_true",
                        help="the native engine mediates every write to stdout and stderr "
                             "(reads of files may still be direct)")
    ns = parser.parse_args(argv)
    if ns.no_direct_files:
        direct_files.ENABLED = False
    if ns.no_output_pipes:
        output_pipes.ENABLED = False
    if ns.size < 1 or ns.repeat < 1:
        parser.error("--size and --repeat must be at least 1")
    if ns.calls < 0:
        parser.error("--calls must be 0 (skip) or a number of calls")
    engines = usable_engines(ns.engines)
    calls = call_costs(engines, ns.calls, ns.repeat) if ns.calls else None
    if calls is not None:
        print_call_costs(calls)
    if ns.only_calls:
        if ns.json is not None:
            ns.json.write_text(json.dumps({"calls": calls}, indent=2) + "\n")
        return 0
    result = io_benchmark(ns.size, engines, ns.repeat, ray=not ns.no_ray)
    result["calls"] = calls
    print_io_table(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(c["identical"] for r in result["rows"] for c in r["engines"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
