"""Process trees and threads, side by side with native in one run: fork + execve + wait of a
small program (milliseconds per round, the program's own loop time), a threaded program's
speed-up from a machine with one computation to one with two (and each against the same
program natively with one and with two threads), and a shell pipeline's throughput (MB/s).

Cases, per engine and natively:
- `forkexec N`: N rounds of fork, execve of a static musl program (the workload itself as
  `forkexec child I`, which exits at once) and wait; and `forkexec N /bin/true`, the same
  with Debian's dynamically linked `true` (its loader and libc start in every child).
- `threadsplit 2 WORK`: a fixed amount of work (WORK million steps in 64 parts) split over 2
  threads, on a machine with 1 computation and on one with 2; natively with 1 and 2 threads.
  The native engine runs a process's threads as host threads, in parallel on several
  computations; the emulated engine runs one CPU context per thread, taking turns, so it
  serialises them and shows no speed-up.
- `sh -c 'cat FILE | sha256sum'` and `sh -c 'cat FILE | gzip -1 | wc -c'` over a generated
  file of `--size` MiB: every byte passes through pipes between the processes of a tree.

Each round runs every case natively and on each engine, the order rotating from round to
round so host load hits all columns alike; the best of `--repeat` rounds is kept, and every
output (standard output and exit status) is compared with the native run's: a mismatch is
reported, and the command exits 1. The machines are in-process (no Ray):

    tender-ray bench trees [--engines native,emulated] [--repeat 3] [--rounds 100]
                           [--work 128] [--size 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tender_ray.bench.options import DEFAULT_ENGINES, usable_engines
from tender_ray.config import Engine, MachineConfig, workloads_dir
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec

WAIT_TIMEOUT = 3600.0  # seconds one run may take on a very busy host
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
SH, TRUE = "/bin/sh", "/bin/true"
THREADS = 2  # the threaded program's threads; machines of 1 and of 2 computations
SERIALISED = {"emulated"}  # engines that run one thread of a process at a time
HOST = "host"  # the program run natively (not the native engine, which is a machine)
PIPELINES = ("cat data | sha256sum", "cat data | gzip -1 | wc -c")

# One run: (wall seconds, exit status, standard output, standard error).
Run = tuple[float, int | None, bytes, bytes]


def _native(argv: Sequence[str], cwd: Path) -> Run:
    start = time.perf_counter()
    done = subprocess.run(list(argv), cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, check=False, timeout=WAIT_TIMEOUT)
    return time.perf_counter() - start, done.returncode, done.stdout, done.stderr


def _guest(machine: Machine, argv: Sequence[str], cwd: Path) -> Run:
    """The program on `machine`, from exec to its end (its tree's root's end: every child
    was waited for by then)."""
    image = Path(argv[0]).read_bytes()
    start = time.perf_counter()
    pid = machine.exec(image, Path(argv[0]).name, list(argv),
                       [f"{k}={v}" for k, v in ENV.items()],
                       files=FileViewSpec(cwd=os.fspath(cwd), writable=()),
                       stdin=os.devnull)
    machine.wait(pid, timeout=WAIT_TIMEOUT)
    seconds = time.perf_counter() - start
    info, out, err = machine.reap(pid)
    return seconds, info.exit_status, out, err


def _per_round_ms(run: Run, where: str) -> float:
    """The loop's own time per round, as `forkexec` reports it on standard error."""
    lines = run[3].decode(errors="replace").strip().splitlines()
    if run[1] != 0 or not lines or not lines[-1].endswith(" us per round"):
        raise RuntimeError(f"forkexec {where} ended with status {run[1]} without its time per "
                           f"round: {run[2]!r} {run[3]!r}")
    return float(lines[-1].split()[0]) / 1000


def _same(run: Run, native: Run) -> bool:
    return (run[1], run[2]) == (native[1], native[2])


def _kept(runs: list[Run], native: Run) -> list[Run]:
    """The runs whose output is the native run's (a run cut short is not a fast one); all of
    them when none is, so the time of a wrong run is still shown, marked."""
    return [r for r in runs if _same(r, native)] or runs


def _check(column: dict[str, Any], runs: list[Run], native: Run) -> dict[str, Any]:
    """`column` with `identical`, and what the first run that differs printed (its status,
    the start of its standard output and error) next to what the native run printed."""
    column["identical"] = all(_same(r, native) for r in runs)
    wrong = next((r for r in runs if not _same(r, native)), None)
    if wrong is not None:
        column["differs"] = {"runs": sum(not _same(r, native) for r in runs),
                             "status": wrong[1], "native_status": native[1],
                             "stdout": wrong[2][:200].decode(errors="replace"),
                             "native_stdout": native[2][:200].decode(errors="replace"),
                             "stderr": wrong[3][-300:].decode(errors="replace")}
    return column


def _rounds(repeat: int, sides: Sequence[str],
            measure: Callable[[str], Run]) -> dict[str, list[Run]]:
    """`repeat` rounds of `measure(side)` over every side, the first side rotating."""
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    for i in range(repeat):
        shift = i % len(sides)
        for side in [*sides[shift:], *sides[:shift]]:
            runs[side].append(measure(side))
    return runs


def _runner(machines: dict[str, Machine], argv: Sequence[str], cwd: Path
            ) -> Callable[[str], Run]:
    """`argv` natively (side HOST) or on the machine of an engine (side: its name)."""
    def run(side: str) -> Run:
        return _native(argv, cwd) if side == HOST else _guest(machines[side], argv, cwd)
    return run


def _generate(path: Path, size_mib: float) -> int:
    """A compressible but not trivial input (text of random words) of `size_mib` MiB."""
    size = max(1, int(size_mib * (1 << 20)))
    block = b"".join(os.urandom(8).hex().encode() + b" \n"[i % 2:i % 2 + 1]
                     for i in range(4096))
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[:size % len(block)])
    return size


def fork_exec(machines: dict[str, Machine], rounds: int, repeat: int, cwd: Path
              ) -> list[dict[str, Any]]:
    """fork + execve + wait, milliseconds per round, of a static program and of /bin/true."""
    program = os.fspath(workloads_dir() / "forkexec")
    cases = [("fork+exec+wait, static musl program", [program, str(rounds)])]
    if Path(TRUE).is_file():
        cases.append(("fork+exec+wait, /bin/true (dynamic, glibc)",
                      [program, str(rounds), TRUE]))
    rows = []
    for label, argv in cases:
        runs = _rounds(repeat, [HOST, *machines], _runner(machines, argv, cwd))
        native = runs.pop(HOST)
        base = min(_per_round_ms(r, "natively") for r in native)
        columns = {}
        for engine, got in runs.items():
            kept = [r for r in got if _same(r, native[0])]
            ms = min(_per_round_ms(r, f"on {engine}") for r in kept) if kept else None
            columns[engine] = _check({"ms": None if ms is None else round(ms, 3),
                                      "ratio": None if ms is None else round(ms / base, 3)},
                                     got, native[0])
        rows.append({"case": label, "rounds": rounds, "native_ms": round(base, 3),
                     "engines": columns})
    return rows


def threads(machines: dict[str, tuple[Machine, Machine]], work: int, repeat: int,
            cwd: Path) -> dict[str, Any]:
    """`threadsplit` with THREADS threads on a machine of 1 and of 2 computations, and
    natively with 1 and with THREADS threads: seconds, speed-ups, ratios to native."""
    program = os.fspath(workloads_dir() / "threadsplit")
    one, many = [program, "1", str(work)], [program, str(THREADS), str(work)]
    sides = [f"{HOST}-1", f"{HOST}-{THREADS}"] + [f"{e}/{c}" for e in machines for c in (1, 2)]

    def measure(side: str) -> Run:
        if side.startswith(f"{HOST}-"):
            return _native(one if side == f"{HOST}-1" else many, cwd)
        engine, computations = side.split("/")
        return _guest(machines[engine][int(computations) - 1], many, cwd)

    runs = _rounds(repeat, sides, measure)
    reference = runs[f"{HOST}-1"][0]
    if reference[1] != 0:
        raise RuntimeError(f"threadsplit natively: status {reference[1]}: {reference[2]!r}")
    best = {side: min(r[0] for r in _kept(got, reference)) for side, got in runs.items()}
    n1, n2 = best[f"{HOST}-1"], best[f"{HOST}-{THREADS}"]
    columns = {}
    for engine in machines:
        c1, c2 = best[f"{engine}/1"], best[f"{engine}/2"]
        columns[engine] = _check({
            "one_computation_s": round(c1, 4), "two_computations_s": round(c2, 4),
            "speedup": round(c1 / c2, 3), "one_vs_native_1_thread": round(c1 / n1, 3),
            "two_vs_native_2_threads": round(c2 / n2, 3),
            "threads_serialised": engine in SERIALISED},
            runs[f"{engine}/1"] + runs[f"{engine}/2"], reference)
    return {"case": f"threadsplit {THREADS} {work}", "threads": THREADS,
            "work_million_steps": work, "native_1_thread_s": round(n1, 4),
            "native_2_threads_s": round(n2, 4), "native_speedup": round(n1 / n2, 3),
            "native_identical": all(_same(r, reference) for side in (f"{HOST}-1",
                                    f"{HOST}-{THREADS}") for r in runs[side]),
            "engines": columns}


def pipelines(machines: dict[str, Machine], size: int, repeat: int, cwd: Path
              ) -> list[dict[str, Any]]:
    """Each pipeline over the generated file: seconds and MB/s, natively and per engine."""
    rows = []
    for line in PIPELINES:
        argv = [SH, "-c", line]
        runs = _rounds(repeat, [HOST, *machines], _runner(machines, argv, cwd))
        native = runs.pop(HOST)
        if native[0][1] != 0:
            raise RuntimeError(f"{line!r} natively: status {native[0][1]}: {native[0][3]!r}")
        base = min(r[0] for r in native)
        columns = {}
        for engine, got in runs.items():
            seconds = min(r[0] for r in _kept(got, native[0]))
            columns[engine] = _check({"s": round(seconds, 4),
                                      "mb_s": round(size / seconds / 1e6, 2),
                                      "ratio": round(base / seconds, 3)},  # of native's MB/s
                                     got, native[0])
        rows.append({"case": f"sh -c '{line.replace('data', 'FILE')}'", "bytes": size,
                     "native_s": round(base, 4), "native_mb_s": round(size / base / 1e6, 2),
                     "engines": columns})
    return rows


def trees_benchmark(engines: Sequence[str] = ("native", "emulated"), repeat: int = 3,
                    rounds: int = 100, work: int = 128, size_mib: float = 64
                    ) -> dict[str, Any]:
    """All three parts (see the module's docstring) on in-process machines."""
    for program in (SH, "/usr/bin/cat", "/usr/bin/sha256sum", "/usr/bin/gzip", "/usr/bin/wc"):
        if not Path(program).is_file():
            raise FileNotFoundError(f"{program} is not installed (Debian: dash, coreutils, "
                                    "gzip)")
    for name in ("forkexec", "threadsplit"):
        if not (workloads_dir() / name).is_file():
            raise FileNotFoundError(f"{workloads_dir() / name} is missing: build the "
                                    "workloads (make -C workloads)")
    machines: dict[str, tuple[Machine, Machine]] = {}
    try:
        for i, engine in enumerate(engines):
            def make(computations: int, engine: str = engine, i: int = i) -> Machine:
                return Machine(MachineConfig(name=f"trees-{engine}-{computations}",
                                             engine=Engine(engine), computations=computations,
                                             memory_mib=256),
                               pid_base=100_000 * (2 * i + computations))
            machines[engine] = (make(1), make(2))
        single = {engine: pair[0] for engine, pair in machines.items()}
        with tempfile.TemporaryDirectory(prefix="tender-bench-trees-") as tmp:
            cwd = Path(tmp)
            size = _generate(cwd / "data", size_mib)
            result: dict[str, Any] = {
                "engines": list(engines), "repeat": repeat,
                "fork_exec": fork_exec(single, rounds, repeat, cwd),
                "threads": threads(machines, work, repeat, cwd),
                "pipelines": pipelines(single, size, repeat, cwd)}
    finally:
        for pair in machines.values():
            for machine in pair:
                machine.stop()
    result["identical"] = result["threads"]["native_identical"] and all(
        column["identical"] for row in [*result["fork_exec"], result["threads"],
                                        *result["pipelines"]]
        for column in row["engines"].values())
    return result


def _differs(column: dict[str, Any]) -> str:
    return "" if column["identical"] else " (output DIFFERS from the native run's)"


def mismatches(result: dict[str, Any]) -> list[str]:
    """A line per case and engine whose output differed from the native run's: what it
    printed against what the native run printed."""
    lines = []
    for row in [*result["fork_exec"], result["threads"], *result["pipelines"]]:
        for engine, column in row["engines"].items():
            if "differs" in column:
                d = column["differs"]
                lines.append(f"{row['case']} on the {engine} engine: {d['runs']} of "
                             f"{result['repeat'] * (2 if row is result['threads'] else 1)} "
                             f"runs differ: status {d['status']} (native {d['native_status']}), "
                             f"stdout {d['stdout']!r} (native {d['native_stdout']!r}), "
                             f"stderr {d['stderr']!r}")
    return lines


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    engines = result["engines"]
    best = f"best of {result['repeat']}"
    table = Table(title=f"fork + execve + wait, ms per round (the loop's own time), {best}")
    table.add_column("case")
    table.add_column("natively ms", justify="right")
    for engine in engines:
        table.add_column(f"{engine} engine ms", justify="right")
        table.add_column(f"{engine} ÷ natively", justify="right")
    for row in result["fork_exec"]:
        cells = [f"{row['case']} ({row['rounds']} rounds)", f"{row['native_ms']:.3f}"]
        for engine in engines:
            c = row["engines"][engine]
            cells += ["-" if c["ms"] is None else f"{c['ms']:.3f}",
                      ("-" if c["ratio"] is None else f"{c['ratio']:.2f}") + _differs(c)]
        table.add_row(*cells)
    console.print(table)

    t = result["threads"]
    table = Table(title=f"{t['case']}: {t['work_million_steps']} million steps split over "
                        f"{t['threads']} threads, seconds, {best}")
    for name in ("", "1 computation s", "2 computations s", "speed-up",
                 "1 comp. ÷ natively 1 thread", "2 comp. ÷ natively 2 threads"):
        table.add_column(name, justify="right" if name else "left")
    table.add_row("natively (1 / 2 threads)", f"{t['native_1_thread_s']:.3f}",
                  f"{t['native_2_threads_s']:.3f}", f"{t['native_speedup']:.2f}", "1", "1")
    for engine in engines:
        c = t["engines"][engine]
        serialised = " (threads serialised)" if c["threads_serialised"] else ""
        table.add_row(f"{engine} engine{serialised}",
                      f"{c['one_computation_s']:.3f}", f"{c['two_computations_s']:.3f}",
                      f"{c['speedup']:.2f}" + _differs(c),
                      f"{c['one_vs_native_1_thread']:.2f}",
                      f"{c['two_vs_native_2_threads']:.2f}")
    console.print(table)
    if any(t["engines"][e]["threads_serialised"] for e in engines):
        console.print("The emulated engine runs one CPU context per thread and serialises "
                      "a process's threads: no speed-up is expected there.")

    table = Table(title=f"pipelines over a generated file, MB/s, {best}")
    table.add_column("case")
    table.add_column("natively MB/s", justify="right")
    for engine in engines:
        table.add_column(f"{engine} engine MB/s", justify="right")
        table.add_column(f"{engine} ÷ natively", justify="right")
    for row in result["pipelines"]:
        cells = [f"{row['case']} ({row['bytes'] / (1 << 20):.3g} MiB)",
                 f"{row['native_mb_s']:.1f}"]
        for engine in engines:
            c = row["engines"][engine]
            cells += [f"{c['mb_s']:.1f}", f"{c['ratio']:.2f}" + _differs(c)]
        table.add_row(*cells)
    console.print(table)


def main(argv: Sequence[str] | None = None, prog: str = "python -m tender_ray.bench.trees"
         ) -> int:
    """The command line; exit status 1 when an output differs from the native run's."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help="engines to compare, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    parser.add_argument("--rounds", type=int, default=100, metavar="N",
                        help="fork+exec+wait rounds in one run of forkexec")
    parser.add_argument("--work", type=int, default=128, metavar="MILLIONS",
                        help="the threaded program's work, in million steps")
    parser.add_argument("--size", type=float, default=64, metavar="MIB",
                        help="size of the pipelines' generated input file")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    ns = parser.parse_args(argv)
    if ns.repeat < 1 or ns.rounds < 1 or ns.work < 1:
        parser.error("--repeat, --rounds and --work must be at least 1")
    if ns.size <= 0:
        parser.error("--size must be a positive number of MiB")
    engines = usable_engines(ns.engines)
    result = trees_benchmark(engines, ns.repeat, ns.rounds, ns.work, ns.size)
    print_tables(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    if not result["identical"]:
        for line in mismatches(result):
            print(f"tender-ray: {line}", file=sys.stderr)
        print("tender-ray: an output differs from the native run's (marked above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
