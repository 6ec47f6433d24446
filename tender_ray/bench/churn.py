"""The churn benchmark: many short processes arriving and leaving over minutes on a few machines
with the balancer moving them (most arrive on one machine, so it must), run on real machine
actors. It checks that nothing leaks: at the end every machine's frames are all free and every
resource manager has nothing handed out (`ManagerStatistics.live == 0`), no machine actor was
restarted (its worker pid unchanged), every output is the native one, and the machine actors'
worker memory (VmRSS from /proc/<pid>/status, sampled at the start, middle and end) stays
flat: it reports the slope in MiB per 100 processes."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tender_ray.balancing.policies import Policy
from tender_ray.cli.scenario.model import (
    BalancerSpec,
    MachineSpec,
    Scenario,
    WorkloadSpec,
    resolve_program,
)
from tender_ray.errors import UsageError
from tender_ray.kernel.snapshots import MachineStatistics

# Programs of workloads/bin of a few seconds at most natively, a mix of compute, sleep and
# memory so frames, files and processes are made and given back all the time; the computing
# ones live long enough for a balancing round to see the hot machine loaded and move them.
PROGRAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("compute_sleep", ("250",)),
    ("compute_sleep", ("150",)),
    ("memhold", ("4", "300", "10")),
    ("sieve", ("20000000",)),
)
MACHINES = 4
HOT_MACHINE = "m0"  # where most processes arrive: the balancer has work to do
HOT_SHARE = 0.75  # the share of arrivals on HOT_MACHINE; the rest go to the least loaded


@dataclass(frozen=True)
class ChurnSpec:
    processes: int = 1000
    rate: float = 1000 / 600  # arrivals per second (1,000 over ten minutes)
    machines: int = MACHINES
    seed: int = 0

    def check(self) -> None:
        if self.processes < 1:
            raise UsageError(f"--processes {self.processes}: use at least 1")
        if self.rate <= 0:
            raise UsageError(f"--rate {self.rate}: use a positive number of arrivals per second")
        if self.machines < 2:
            raise UsageError(f"--machines {self.machines}: migrations need at least 2")


def churn_scenario(spec: ChurnSpec) -> Scenario:
    """Arrivals one every 1/rate seconds, a seeded random program each, most on the hot
    machine (`HOT_SHARE`) and the rest on the least loaded."""
    spec.check()
    rng = random.Random(spec.seed)
    workloads = []
    for i in range(spec.processes):
        program, args = rng.choice(PROGRAMS)
        workloads.append(WorkloadSpec(program=program, args=list(args),
                                      at=round(i / spec.rate, 3),
                                      machine=HOT_MACHINE if rng.random() < HOT_SHARE else None))
    return Scenario(name=f"churn-seed{spec.seed}",
                    description=f"{spec.processes} processes at {spec.rate:.2f}/s",
                    machines=[MachineSpec(name="m", count=spec.machines, computations=1,
                                          memory_mib=256)],
                    workloads=workloads,
                    balancer=BalancerSpec(policy=Policy.THRESHOLD, interval=0.25),
                    timeout=spec.processes / spec.rate + 300.0)


def leaks(stats: MachineStatistics) -> list[str]:
    """What a machine with no process left still holds: frames in use, resources handed out
    (a manager's `live`), processes listed. Empty when it is back to its pools."""
    out = []
    mem = stats.memory
    if mem.frames_free != mem.frames_total or mem.frames_used:
        out.append(f"{stats.name}: {mem.frames_total - mem.frames_free} frames not free")
    for m in stats.managers:
        if m.live:
            out.append(f"{stats.name}: {m.live} {m.resource} still handed out")
    if any(stats.processes.values()):
        out.append(f"{stats.name}: processes left {stats.processes}")
    return out


def rss_kib(pid: int) -> int | None:
    """The VmRSS of a host process in KiB, or None when it is gone or not on this host."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def slope_mib_per_100(samples: Sequence[tuple[int, float]]) -> float | None:
    """The least-squares slope of (processes started, RSS MiB) samples, per 100 processes;
    None with fewer than two distinct process counts."""
    if len(samples) < 2:
        return None
    xs = [float(x) for x, _ in samples]
    ys = [y for _, y in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


@dataclass(frozen=True)
class ChurnResult:
    processes: int
    migrations: int
    seconds: float
    leaks: tuple[str, ...]
    restarted_actors: tuple[str, ...]  # machines whose worker pid changed
    mismatched: tuple[str, ...]
    not_ended: tuple[str, ...]
    rss_mib: dict[str, list[float]]  # machine -> at start, middle, end
    rss_slope_mib_per_100: dict[str, float | None]

    @property
    def ok(self) -> bool:
        return not (self.leaks or self.restarted_actors or self.mismatched or self.not_ended)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def run_churn(spec: ChurnSpec, *, address: str | None = None) -> ChurnResult:
    from tender_ray.cli.scenario.run import ScenarioRun

    scenario = churn_scenario(spec)
    base = Path.cwd()
    programs = {i: resolve_program(w.program, base) for i, w in enumerate(scenario.workloads)}
    run = ScenarioRun(scenario, programs, address=address)
    started = time.monotonic()
    run.setup()
    handles = run.cluster.machines
    pids = {name: h.worker_pid() for name, h in handles.items()}
    samples: dict[str, list[tuple[int, float]]] = {name: [] for name in handles}

    def sample() -> None:
        begun = sum(1 for a in run.arrivals if a.started is not None)
        for name, pid in pids.items():
            kib = rss_kib(pid)
            if kib is not None:
                samples[name].append((begun, kib / 1024))

    sample()
    middle_at = spec.processes / spec.rate / 2  # halfway through the arrivals
    sampled_middle = False
    leaked: list[str] = []
    restarted: list[str] = []
    try:
        deadline = started + scenario.timeout
        while run.step() and time.monotonic() < deadline:
            if not sampled_middle and run.elapsed >= middle_at:
                sample()
                sampled_middle = True
            run.wait_next()
        sample()
        for name, h in handles.items():
            if h.worker_pid() != pids[name]:
                restarted.append(name)
            leaked += leaks(h.statistics())
    except BaseException:
        run.cluster.shutdown()
        raise
    report = run.finish(None).report
    return ChurnResult(
        processes=len(report.processes), migrations=report.migrations.count,
        seconds=time.monotonic() - started, leaks=tuple(leaked),
        restarted_actors=tuple(restarted),
        mismatched=tuple(p.name for p in report.processes if p.output_matches_native is not True),
        not_ended=tuple(p.name for p in report.processes if p.exit_status is None)
        + tuple(f"{x.name}: {x.reason}" for x in report.not_started),
        rss_mib={n: [round(y, 1) for _, y in s] for n, s in samples.items()},
        rss_slope_mib_per_100={n: slope_mib_per_100(s) for n, s in samples.items()})


def print_result(result: ChurnResult) -> None:
    print(f"churn: {result.processes} processes, {result.migrations} migrations, "
          f"{result.seconds:.0f} s")
    for name, rss in result.rss_mib.items():
        slope = result.rss_slope_mib_per_100[name]
        print(f"  {name}: worker RSS {' -> '.join(f'{x:.1f}' for x in rss)} MiB, slope "
              f"{'-' if slope is None else f'{slope:+.2f}'} MiB/100 processes")
    for label, items in (("leak", result.leaks), ("actor restarted", result.restarted_actors),
                         ("output differs from native", result.mismatched),
                         ("did not end", result.not_ended)):
        for item in items:
            print(f"  {label}: {item}")
    print("ok" if result.ok else "FAILED")


def main(argv: Sequence[str] | None = None,
         prog: str = "python -m tender_ray.bench.churn") -> int:
    """The churn benchmark's command line; exit status 1 on a leak, a restart or a mismatch."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Many short processes arriving and leaving with migrations: "
                               "checks frames, resources and actor memory for leaks.")
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000 / 600,
                        help="arrivals per second (default: 1,000 over ten minutes)")
    parser.add_argument("--machines", type=int, default=MACHINES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=None, help="a Ray cluster (default: embedded)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    ns = parser.parse_args(argv)
    spec = ChurnSpec(ns.processes, ns.rate, ns.machines, ns.seed)
    try:
        spec.check()
    except UsageError as exc:
        parser.error(str(exc))
    result = run_churn(spec, address=ns.address)
    print_result(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
