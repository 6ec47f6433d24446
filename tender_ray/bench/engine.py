"""Engine benchmarks: workloads run natively and on a Tender machine, side by side.

`engine_benchmark()` runs each workload of `workloads/bin` as a host process and as a Tender
process (a `Machine` with one computation, exec then wait), alternately, best of `repeat`
each, checks the outputs are byte-identical, and then measures time-slicing: in each of
`repeat` rounds, one uninterrupted run of `sieve`, then N copies started at once on the one
computation; throughput = N x single / batch, the median round is reported. The result is a
JSON-able dict; `print_engine_table()` shows it. Plain Python, no Ray.

Wall-clock figures on a shared host move with its load, so each Tender run also reports the
CPU time its computation thread used (`cpu_s`), and the time-slicing figure is also given per
CPU second (`cpu_efficiency`: did slicing make the work itself dearer) next to the share of a
core the computation got (`host_share`). Load averages before and after are in `host`.

`compare_engines()` puts the engines side by side instead: run time ÷ native per workload, one
column pair per engine. That is what the command runs unless `--engine` names one engine to
look at in detail:

    python -m tender_ray.bench.engine [--engines native,emulated] [--repeat 3] [--json out.json]
    python -m tender_ray.bench.engine --engine emulated [--processes 8] [--quantum-us 5000]
    tender-ray bench engine ...  (the same)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from tender_ray.bench.options import DEFAULT_ENGINES, usable_engines
from tender_ray.config import Engine, MachineConfig, workloads_dir
from tender_ray.engines.emulated import cpu as cpu_module
from tender_ray.errors import UsageError
from tender_ray.kernel.machine import Machine

if TYPE_CHECKING:
    from rich.console import Console

WorkloadSpec = tuple[str, list[str]]

DEFAULT_WORKLOADS: tuple[WorkloadSpec, ...] = (
    ("sieve", []), ("hashwalk", []), ("recursion_fp", []), ("compute_sleep", []))
TIMESLICE_WORKLOAD: WorkloadSpec = ("sieve", [])
WAIT_TIMEOUT = 3600.0  # seconds one Tender run may take before the benchmark gives up


class NativeResult(TypedDict):
    best_s: float  # wall time of the fastest run (fork and exec included)
    cpu_s: float  # user + system time of that run
    runs_s: list[float]
    exit_status: int


class TenderResult(TypedDict):
    best_s: float  # `ProcessInfo.run_seconds` of the fastest run (exec to exit)
    cpu_s: float  # `ProcessInfo.cpu_seconds` of that run: the computation thread's CPU time
    runs_s: list[float]
    exit_status: int | None
    quanta: int  # of the fastest run
    counters: dict[str, int]  # the emulated CPU's counters over the fastest run


class WorkloadResult(TypedDict):
    name: str
    args: list[str]
    native: NativeResult
    tender: TenderResult
    ratio: float  # tender best / native best (wall)
    cpu_ratio: float  # tender cpu / native cpu
    identical: bool  # stdout and exit status equal native in every run


class TimesliceRound(TypedDict):
    single_s: float  # one uninterrupted run
    single_cpu_s: float
    total_s: float  # first exec to last exit, all processes started at once
    sum_cpu_s: float  # the processes' CPU time, summed
    quanta: int
    timeslice_throughput: float  # processes * single_s / total_s
    cpu_efficiency: float  # processes * single_cpu_s / sum_cpu_s
    host_share: float  # sum_cpu_s / total_s: how much of a core the computation got


class TimesliceResult(TimesliceRound):
    """The round with the median throughput, and every round."""

    workload: str
    args: list[str]
    processes: int
    quantum_us: int
    identical: bool
    rounds: list[TimesliceRound]


class HostInfo(TypedDict):
    cpu_model: str
    cores: int  # usable by this process
    logical_cpus: int
    load_before: list[float]
    load_after: list[float]
    python: str
    platform: str
    unicorn: str
    engine: str
    engine_notice: str
    quantum_us: int
    repeat: int


class EngineBenchmark(TypedDict):
    workloads: list[WorkloadResult]
    timeslice: TimesliceResult | None
    host: HostInfo


def _host_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _native_once(path: Path, name: str, args: Sequence[str]) -> tuple[float, float, int, bytes]:
    """One host run: (wall, user+sys, exit status as Tender reports it, stdout)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([name, *args], executable=str(path), capture_output=True,
                          stdin=subprocess.DEVNULL, env={}, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    status = done.returncode if done.returncode >= 0 else 128 - done.returncode
    return wall, cpu, status, done.stdout


def _tender_start(machine: Machine, image: bytes, name: str, args: Sequence[str]) -> int:
    return machine.exec(image, name, [name, *args])


def _tender_finish(machine: Machine, pid: int) -> tuple[float, float, int | None, bytes]:
    """Wait for and reap one process: (run s, cpu s, exit status, stdout)."""
    info = machine.wait(pid, timeout=WAIT_TIMEOUT)
    if info.state != "zombie":
        machine.kill(pid)
        machine.wait(pid, timeout=60)
        raise TimeoutError(f"{info.name} (pid {pid}) did not finish in {WAIT_TIMEOUT:.0f} s")
    info, out, _err = machine.reap(pid)
    return info.run_seconds, info.cpu_seconds, info.exit_status, out


def _machine_quanta(machine: Machine) -> int:
    return sum(c.quanta for c in machine.statistics().computations)


def _bench_workload(machine: Machine, directory: Path, name: str, args: list[str],
                    repeat: int) -> WorkloadResult:
    """Native and Tender runs alternate, so a change in host load touches both alike."""
    path = directory / name
    image = path.read_bytes()
    native_runs: list[tuple[float, float, int, bytes]] = []
    best: tuple[float, float, int | None, int, dict[str, int]] | None = None
    runs: list[float] = []
    tender_outputs: list[tuple[bytes, int | None]] = []
    for _ in range(repeat):
        native_runs.append(_native_once(path, name, args))
        before, quanta_before = cpu_module.engine_counters(), _machine_quanta(machine)
        pid = _tender_start(machine, image, name, args)
        run_s, cpu_s, status, out = _tender_finish(machine, pid)
        quanta = _machine_quanta(machine) - quanta_before
        counters = _counters_delta(before, cpu_module.engine_counters())
        runs.append(run_s)
        tender_outputs.append((out, status))
        if best is None or run_s < best[0]:
            best = (run_s, cpu_s, status, quanta, counters)
    assert best is not None
    wall, ncpu, nstatus, nout = min(native_runs, key=lambda r: r[0])
    identical = (all(r[3] == nout and r[2] == nstatus for r in native_runs)
                 and all(o == nout and s == nstatus for o, s in tender_outputs))
    run_s, cpu_s, status, quanta, counters = best
    return WorkloadResult(
        name=name, args=list(args),
        native=NativeResult(best_s=round(wall, 4), cpu_s=round(ncpu, 4),
                            runs_s=[round(r[0], 4) for r in native_runs], exit_status=nstatus),
        tender=TenderResult(best_s=round(run_s, 4), cpu_s=round(cpu_s, 4),
                            runs_s=[round(r, 4) for r in runs], exit_status=status,
                            quanta=quanta, counters=counters),
        ratio=round(run_s / wall, 3) if wall > 0 else float("inf"),
        cpu_ratio=round(cpu_s / ncpu, 3) if ncpu > 0 else float("inf"),
        identical=identical)


def _bench_timeslice(machine: Machine, directory: Path, name: str, args: list[str],
                     processes: int, rounds: int, quantum_us: int) -> TimesliceResult:
    """Rounds of one uninterrupted run followed by `processes` runs started at once; the
    round with the median throughput is reported (a single best run against one batch would
    favour the single run whenever the host's load moves)."""
    path = directory / name
    image = path.read_bytes()
    _wall, _cpu, nstatus, nout = _native_once(path, name, args)
    identical = True
    measured: list[TimesliceRound] = []
    for _ in range(max(1, rounds)):
        single_s, single_cpu, status, out = _tender_finish(
            machine, _tender_start(machine, image, name, args))
        identical = identical and out == nout and status == nstatus
        quanta_before = _machine_quanta(machine)
        start = time.perf_counter()
        pids = [_tender_start(machine, image, name, args) for _ in range(processes)]
        finished = [_tender_finish(machine, pid) for pid in pids]
        total = time.perf_counter() - start
        quanta = _machine_quanta(machine) - quanta_before
        sum_cpu = sum(f[1] for f in finished)
        identical = identical and all(f[3] == nout and f[2] == nstatus for f in finished)
        measured.append(TimesliceRound(
            single_s=round(single_s, 4), single_cpu_s=round(single_cpu, 4),
            total_s=round(total, 4), sum_cpu_s=round(sum_cpu, 4), quanta=quanta,
            timeslice_throughput=round(processes * single_s / total, 4) if total else 0.0,
            cpu_efficiency=round(processes * single_cpu / sum_cpu, 4) if sum_cpu else 0.0,
            host_share=round(sum_cpu / total, 4) if total else 0.0))
    median = sorted(measured, key=lambda r: r["timeslice_throughput"])[len(measured) // 2]
    return TimesliceResult(workload=name, args=list(args), processes=processes,
                           quantum_us=quantum_us, identical=identical, rounds=measured,
                           **median)


def engine_benchmark(workloads: list[tuple[str, list[str]]] | None = None, *, repeat: int = 3,
                     timeslice_processes: int = 8, quantum_us: int = 5000,
                     engine: str = "emulated",
                     timeslice_workload: tuple[str, list[str]] | None = None,
                     memory_mib: int = 512) -> EngineBenchmark:
    """Measure the engine against native execution; see the module docstring.

    `workloads`: (binary name in `workloads_dir()`, arguments); default sieve, hashwalk,
    recursion_fp and compute_sleep at their default sizes. `timeslice_processes` 0 skips the
    time-slicing figure. `engine` is the machine's engine ("emulated" by default: the
    Unicorn CPU whatever the machine default is).
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    specs = [(n, list(a)) for n, a in (workloads if workloads is not None
                                       else DEFAULT_WORKLOADS)]
    directory = workloads_dir()
    for name, _ in [*specs, timeslice_workload or TIMESLICE_WORKLOAD]:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"no workload {name!r} in {directory}")
    load_before = _load()
    pool = max(2, timeslice_processes)
    machine = Machine(MachineConfig(name="bench", computations=1, quantum_us=quantum_us,
                                    engine=Engine(engine), pool_size=min(pool, 64),
                                    memory_mib=memory_mib))
    try:
        results = [_bench_workload(machine, directory, name, args, repeat)
                   for name, args in specs]
        timeslice = None
        if timeslice_processes > 0:
            ts_name, ts_args = timeslice_workload or TIMESLICE_WORKLOAD
            timeslice = _bench_timeslice(machine, directory, ts_name, list(ts_args),
                                         timeslice_processes, repeat, quantum_us)
        resolved, notice = machine.engine, machine.engine_notice
    finally:
        machine.stop()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        from importlib.metadata import version

        unicorn_version = version("unicorn")
    except Exception:  # the benchmark still runs without package metadata
        unicorn_version = "unknown"
    host = HostInfo(cpu_model=_host_cpu_model(), cores=cores,
                    logical_cpus=os.cpu_count() or cores, load_before=load_before,
                    load_after=_load(), python=platform.python_version(),
                    platform=platform.platform(), unicorn=unicorn_version, engine=resolved,
                    engine_notice=notice, quantum_us=quantum_us, repeat=repeat)
    return EngineBenchmark(workloads=results, timeslice=timeslice, host=host)


# --- the engines side by side --------------------------------------------------------------

class EngineColumn(TypedDict):
    engine: str  # the engine that ran (a requested one may have fallen back)
    best_s: float  # ProcessInfo.run_seconds of the fastest run (exec to exit)
    runs_s: list[float]
    ratio: float  # best_s / the native best
    identical: bool  # stdout and exit status equal native in every run


class SideBySideRow(TypedDict):
    name: str
    args: list[str]
    native_s: float  # the best host run (fork and exec included)
    engines: dict[str, EngineColumn]  # by requested engine name


class EngineComparison(TypedDict):
    engines: list[str]
    notices: dict[str, str]  # why a requested engine could not be used, if so
    rows: list[SideBySideRow]
    quantum_us: int
    repeat: int
    load_before: list[float]
    load_after: list[float]


def compare_engines(workloads: list[tuple[str, list[str]]] | None = None, *,
                    engines: Sequence[str] = ("native", "emulated"), repeat: int = 3,
                    quantum_us: int = 5000, memory_mib: int = 512) -> EngineComparison:
    """Run time ÷ native for each engine, per workload, measured side by side.

    One machine per engine (one computation each); for every workload each round runs it
    natively and then once on every engine, so a change in the host's load hits all columns
    alike, and the best of `repeat` rounds is kept.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    specs = [(n, list(a)) for n, a in (workloads if workloads is not None
                                       else DEFAULT_WORKLOADS)]
    directory = workloads_dir()
    for name, _ in specs:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"no workload {name!r} in {directory}")
    load_before = _load()
    machines: dict[str, Machine] = {}
    try:
        for requested in engines:
            machines[requested] = Machine(MachineConfig(
                name=f"bench-{requested}", computations=1, quantum_us=quantum_us,
                engine=Engine(requested), memory_mib=memory_mib))
        rows: list[SideBySideRow] = []
        for name, args in specs:
            path = directory / name
            image = path.read_bytes()
            native: list[tuple[float, int, bytes]] = []
            runs: dict[str, list[tuple[float, int | None, bytes]]] = {e: [] for e in engines}
            for _ in range(repeat):
                wall, _cpu, status, out = _native_once(path, name, args)
                native.append((wall, status, out))
                for requested, machine in machines.items():
                    run_s, _cpu_s, tstatus, tout = _tender_finish(
                        machine, _tender_start(machine, image, name, args))
                    runs[requested].append((run_s, tstatus, tout))
            native_best = min(r[0] for r in native)
            _, nstatus, nout = native[0]
            same_native = all(r[1] == nstatus and r[2] == nout for r in native)
            columns: dict[str, EngineColumn] = {}
            for requested, results in runs.items():
                best = min(r[0] for r in results)
                columns[requested] = EngineColumn(
                    engine=machines[requested].engine, best_s=round(best, 4),
                    runs_s=[round(r[0], 4) for r in results],
                    ratio=round(best / native_best, 3) if native_best > 0 else float("inf"),
                    identical=same_native and all(r[1] == nstatus and r[2] == nout
                                                  for r in results))
            rows.append(SideBySideRow(name=name, args=list(args),
                                      native_s=round(native_best, 4), engines=columns))
        notices = {e: m.engine_notice for e, m in machines.items() if m.engine_notice}
    finally:
        for machine in machines.values():
            machine.stop()
    return EngineComparison(engines=list(engines), notices=notices, rows=rows,
                            quantum_us=quantum_us, repeat=repeat, load_before=load_before,
                            load_after=_load())


def print_engine_comparison(result: EngineComparison, console: Console | None = None) -> None:
    """Show a `compare_engines` result: a row per workload, a column pair per engine."""
    from rich.console import Console
    from rich.table import Table

    if console is None:  # keep the columns readable when the output is not a terminal
        console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=f"run time ÷ native, engines side by side — best of "
                        f"{result['repeat']}, {result['quantum_us']} us quanta")
    table.add_column("workload")
    table.add_column("args")
    table.add_column("native s", justify="right")
    for engine in result["engines"]:
        table.add_column(f"{engine} s", justify="right")
        table.add_column(f"{engine} ÷ native", justify="right")
    table.add_column("same", justify="center")
    for row in result["rows"]:
        cells = [row["name"], " ".join(row["args"]) or "(default)", f"{row['native_s']:.3f}"]
        for engine in result["engines"]:
            column = row["engines"][engine]
            ratio = column["ratio"]
            style = "green" if ratio <= 1.2 else "yellow" if ratio <= 4 else "red"
            label = "" if column["engine"] == engine else f" ({column['engine']})"
            cells += [f"{column['best_s']:.3f}{label}", f"[{style}]{ratio:.2f}[/{style}]"]
        same = all(c["identical"] for c in row["engines"].values())
        cells.append("[green]yes[/green]" if same else "[red]NO[/red]")
        table.add_row(*cells)
    console.print(table)
    for engine, notice in result["notices"].items():
        console.print(f"{engine}: {notice}")
    console.print(f"load {result['load_before']} → {result['load_after']}")


def print_engine_table(result: EngineBenchmark, console: Console | None = None) -> None:
    """Show an `engine_benchmark` result as rich tables (on `console`, default stdout)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:  # keep the columns readable when the output is not a terminal
        console = Console() if sys.stdout.isatty() else Console(width=120)
    host = result["host"]
    table = Table(title=f"engine {host['engine']} vs native — best of {host['repeat']}, "
                        f"{host['quantum_us']} us quanta")
    for column, justify in (("workload", "left"), ("args", "left"), ("native s", "right"),
                            ("tender s", "right"), ("cpu s", "right"), ("x native", "right"),
                            ("x cpu", "right"), ("quanta", "right"), ("fills", "right"),
                            ("same", "center")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for w in result["workloads"]:
        ratio = w["ratio"]
        style = "green" if ratio <= 4 else "yellow" if ratio <= 10 else "red"
        table.add_row(w["name"], " ".join(w["args"]) or "(default)",
                      f"{w['native']['best_s']:.3f}", f"{w['tender']['best_s']:.3f}",
                      f"{w['tender']['cpu_s']:.3f}", f"[{style}]{ratio:.2f}[/{style}]",
                      f"{w['cpu_ratio']:.2f}", str(w["tender"]["quanta"]),
                      str(w["tender"]["counters"].get("fills", 0)),
                      "[green]yes[/green]" if w["identical"] else "[red]NO[/red]")
    console.print(table)
    ts = result["timeslice"]
    if ts is not None:
        slicing = Table(title=f"time-slicing: {ts['processes']} x {ts['workload']} on one "
                              f"computation, {ts['quantum_us']} us quanta (median of "
                              f"{len(ts['rounds'])} rounds)")
        for column in ("single s", f"{ts['processes']} at once s", "throughput",
                       "cpu efficiency", "host share", "quanta", "same"):
            slicing.add_column(column, justify="right")
        good = ts["timeslice_throughput"] >= 0.9
        slicing.add_row(f"{ts['single_s']:.3f}", f"{ts['total_s']:.3f}",
                        f"[{'green' if good else 'yellow'}]"
                        f"{100 * ts['timeslice_throughput']:.1f} %[/]",
                        f"{100 * ts['cpu_efficiency']:.1f} %",
                        f"{100 * ts['host_share']:.1f} %", str(ts["quanta"]),
                        "yes" if ts["identical"] else "[red]NO[/red]")
        console.print(slicing)
    console.print(f"host: {host['cpu_model']}, {host['cores']} cores, load "
                  f"{host['load_before']} → {host['load_after']}, Python {host['python']}, "
                  f"unicorn {host['unicorn']}"
                  + (f" — {host['engine_notice']}" if host["engine_notice"] else ""))


def main(argv: Sequence[str] | None = None, prog: str = "python -m tender_ray.bench.engine"
         ) -> int:
    """The engine benchmark's command line; exit status 1 when an output differs from
    native."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run time under Tender against native, per workload: the "
                               "engines side by side, or one engine in detail (--engine).")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (best is kept)")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, metavar="NAMES",
                        help="engines to measure side by side (comma-separated; an engine "
                             "that cannot run here is skipped with a notice)")
    parser.add_argument("--engine", default=None, choices=[e.value for e in Engine],
                        help="measure this one engine in detail instead (quanta, TLB fills, "
                             "time-slicing)")
    parser.add_argument("--processes", type=int, default=8,
                        help="--engine: time-sliced copies of sieve (0: skip)")
    parser.add_argument("--quantum-us", type=int, default=5000, metavar="US",
                        help="--engine: the time slice, microseconds (default 5000: short "
                             "slices, so the time-slicing cost shows)")
    parser.add_argument("--workload", action="append", default=None, metavar="NAME[:ARG...]",
                        help="a workload and its arguments separated by ':' (repeatable)")
    parser.add_argument("--io", type=int, default=0, metavar="MIB",
                        help="side by side: also the system-call-heavy cases of `bench io` "
                             "(sha256sum, gzip, a migrated read, home I/O) on a file of this "
                             "many MiB (0: skip; `bench io` alone adds the Ray case)")
    parser.add_argument("--tracking", action="store_true",
                        help="side by side: also the cost of write tracking (hashwalk with a "
                             "take of its written pages every 50 ms ÷ untracked)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    ns = parser.parse_args(argv)
    if ns.io < 0:
        parser.error("--io must be 0 (skip) or a size in MiB")
    workloads = None
    if ns.workload:
        workloads = [(w.split(":")[0], w.split(":")[1:]) for w in ns.workload]
    if ns.engine is None:
        try:
            engines = usable_engines(ns.engines)
        except UsageError as exc:
            parser.error(str(exc))
        comparison = compare_engines(workloads, engines=engines, repeat=ns.repeat,
                                     quantum_us=ns.quantum_us)
        print_engine_comparison(comparison)
        rows = list(comparison["rows"])
        out: dict[str, Any] = dict(comparison)
        if ns.io:
            from tender_ray.bench.io import io_benchmark, print_io_table

            out["io"] = io_benchmark(ns.io, engines, ns.repeat, ray=False)
            print_io_table(out["io"])
            rows += out["io"]["rows"]
        if ns.tracking:
            from tender_ray.bench.tracking import print_tracking_table, tracking_benchmark

            out["tracking"] = tracking_benchmark(engines, ns.repeat)
            print_tracking_table(out["tracking"])
        if ns.json is not None:
            ns.json.write_text(json.dumps(out, indent=2) + "\n")
        tracked_ok = all(r["identical"] for r in out.get("tracking", {}).get("rows", []))
        return 0 if tracked_ok and all(
            c["identical"] for r in rows for c in r["engines"].values()) else 1
    result = engine_benchmark(workloads, repeat=ns.repeat, timeslice_processes=ns.processes,
                              quantum_us=ns.quantum_us, engine=ns.engine)
    print_engine_table(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = all(w["identical"] for w in result["workloads"]) and (
        result["timeslice"] is None or result["timeslice"]["identical"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
