"""The churn benchmark: many short processes arriving and leaving over minutes on a few machines
with the balancer moving them (most arrive on one machine, so it must), run on real machine
actors. It checks that nothing leaks: at the end every machine's frames are all free and every
resource manager has nothing handed out (`ManagerStatistics.live == 0`), no machine actor was
restarted (its worker pid unchanged), every output is the native one, and it records the
machine actors' worker memory over the run, every `--sample-every` seconds: VmRSS and its
parts (`memory_kib`), two of which only grow to a high-water mark (the machine's real memory,
whose freed frames are kept, and the Ray object store pages the worker touched). What tells a
leak from a warm-up is the second half of the run: the slope there in MiB per minute and the
growth from the half-way point to the end, of the whole and of each part."""

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
from tender_ray.bench.scenarios import SIEVE, Program, compute_sleep, memhold, start_scenario
from tender_ray.cli.scenario.model import BalancerSpec, MachineSpec, Scenario, WorkloadSpec
from tender_ray.errors import UsageError
from tender_ray.kernel.snapshots import MachineStatistics

# What the arrivals run: a mix of compute, sleep and memory so frames, files and processes are
# made and given back all the time; the computing ones live long enough for a balancing round
# to see the hot machine loaded and move them.
PROGRAMS: tuple[Program, ...] = (compute_sleep(250), compute_sleep(150), memhold(4), SIEVE)
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


def memory_kib(pid: int, frames_bytes: int) -> dict[str, int] | None:
    """Where a machine actor's worker memory is, in KiB; None when the process is gone.

    "rss" (VmRSS) and its kinds from /proc/<pid>/status, "anon" (the heaps: interpreter,
    numpy, engines), "file" (code and files mapped) and "shmem"; and from /proc/<pid>/smaps
    two mappings that only grow to a high-water mark: "frames", the machine's real memory
    (the native engine's memfd "tender-real-memory", or an anonymous mapping of exactly
    `frames_bytes`: freed frames are kept, never given back to the host), and
    "object_store", Ray's object store (plasma) pages the worker has touched, page blocks
    of migrations among them. A part not found is left out (an anonymous mapping the kernel
    merged with a neighbour has another size: no figure rather than a wrong one)."""
    out: dict[str, int] = {}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        smaps = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return None
    for line in status:
        key, _, value = line.partition(" ")
        if key.strip() in keys:
            out[keys[key.strip()]] = int(value.split()[0])
    if "rss" not in out:
        return None
    part = ""
    for line in smaps:
        head, _, rest = line.partition(" ")
        if "-" in head and ":" not in head:  # a mapping's first line: range, perms, ..., name
            lo, _, hi = head.partition("-")
            fields = rest.split(maxsplit=4)
            name = fields[4] if len(fields) > 4 else ""
            try:
                size = int(hi, 16) - int(lo, 16)
            except ValueError:
                size = -1
            part = ("frames" if "tender-real-memory" in name
                    or (not name and size == frames_bytes)
                    else "object_store" if "plasma" in name else "")
        elif part and head == "Rss:":
            out[part] = out.get(part, 0) + int(rest.split()[0])
    return out


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of (x, y) points; None with fewer than two distinct x."""
    if len(points) < 2:
        return None
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def slope_mib_per_100(samples: Sequence[tuple[int, float]]) -> float | None:
    """The least-squares slope of (processes started, RSS MiB) samples, per 100 processes;
    None with fewer than two distinct process counts."""
    per_process = slope(samples)
    return None if per_process is None else 100 * per_process


# The parts of a sample the steady state is given for: the whole, the two high-water
# mappings, the heaps, and what is neither high-water mapping ("other").
PARTS = ("rss", "frames", "object_store", "anon", "other")


@dataclass(frozen=True)
class RssSample:
    """One look at a machine actor's worker memory, in MiB by part (see `memory_kib`)."""

    seconds: float  # after the run started
    processes: int  # started by then
    mib: dict[str, float]  # "rss", and the parts that were found

    @property
    def rss_mib(self) -> float:
        return self.mib["rss"]

    def part(self, name: str) -> float | None:
        """A part in MiB; "other" is the RSS besides the frames and the object store (None
        unless both were found)."""
        if name == "other":
            if "frames" not in self.mib or "object_store" not in self.mib:
                return None
            return round(self.mib["rss"] - self.mib["frames"] - self.mib["object_store"], 1)
        return self.mib.get(name)


@dataclass(frozen=True)
class SteadyState:
    """A machine actor's memory over the second half of the run: from `half_at` seconds (the
    half-way point of the arrivals) to the last sample, by part (`PARTS`)."""

    half_at: float
    samples: int  # in the second half, both ends included
    mib_per_min: dict[str, float | None]  # least-squares slope
    growth_mib: dict[str, float | None]  # the last sample less the one at the half-way point


def steady_state(samples: Sequence[RssSample], half_at: float) -> SteadyState:
    """The second half of `samples` (those from `half_at` seconds on) as slopes and growths."""
    second = [s for s in samples if s.seconds >= half_at]
    per_min: dict[str, float | None] = {}
    growth: dict[str, float | None] = {}
    for name in PARTS:
        points = [(s.seconds / 60, s.part(name)) for s in second]
        got = slope([(x, y) for x, y in points if y is not None])
        per_min[name] = None if got is None else round(got, 3)
        ends = (points[0][1], points[-1][1]) if points else (None, None)
        growth[name] = (None if ends[0] is None or ends[1] is None
                        else round(ends[1] - ends[0], 1))
    return SteadyState(half_at=round(half_at, 1), samples=len(second), mib_per_min=per_min,
                       growth_mib=growth)


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
    rss_slope_mib_per_100: dict[str, float | None]  # over the whole run
    rss_samples: dict[str, list[RssSample]]  # machine -> every sample, in order
    steady: dict[str, SteadyState]  # machine -> its second half
    engines: dict[str, str]  # machine -> the engine it ran (its real memory's kind)

    @property
    def ok(self) -> bool:
        return not (self.leaks or self.restarted_actors or self.mismatched or self.not_ended)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


SAMPLE_EVERY = 15.0  # seconds between two looks at the machine actors' memory


def run_churn(spec: ChurnSpec, *, address: str | None = None,
              sample_every: float = SAMPLE_EVERY) -> ChurnResult:
    """Run the churn on real machine actors, sampling their workers' memory every
    `sample_every` seconds, at the half-way point of the arrivals and at the end."""
    if sample_every <= 0:
        raise UsageError(f"--sample-every {sample_every}: use a positive number of seconds")
    scenario = churn_scenario(spec)
    started = time.monotonic()
    run = start_scenario(scenario, address=address)
    handles = run.cluster.machines
    pids = {name: h.worker_pid() for name, h in handles.items()}
    memory = {c.name: c.memory_mib << 20 for c in scenario.machine_configs()}
    samples: dict[str, list[RssSample]] = {name: [] for name in handles}

    def sample() -> None:
        begun = sum(1 for a in run.arrivals if a.started is not None)
        at = round(run.elapsed, 1)
        for name, pid in pids.items():
            kib = memory_kib(pid, memory.get(name, 0))
            if kib is not None:
                samples[name].append(RssSample(at, begun, {k: round(v / 1024, 1)
                                                           for k, v in kib.items()}))

    sample()
    middle_at = spec.processes / spec.rate / 2  # halfway through the arrivals
    sampled_middle = False
    next_at = sample_every
    leaked: list[str] = []
    restarted: list[str] = []
    engines: dict[str, str] = {}
    try:
        deadline = started + scenario.timeout
        while run.step() and time.monotonic() < deadline:
            if not sampled_middle and run.elapsed >= middle_at:
                sample()
                sampled_middle = True
            elif run.elapsed >= next_at:
                sample()
            while next_at <= run.elapsed:  # the next sample is due a period on
                next_at += sample_every
            run.wait_next()
        sample()
        for name, h in handles.items():
            if h.worker_pid() != pids[name]:
                restarted.append(name)
            stats = h.statistics()
            engines[name] = stats.engine
            leaked += leaks(stats)
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
        rss_mib={n: _start_middle_end(s, middle_at) for n, s in samples.items()},
        rss_slope_mib_per_100={n: slope_mib_per_100([(x.processes, x.rss_mib) for x in s])
                               for n, s in samples.items()},
        rss_samples=samples,
        steady={n: steady_state(s, middle_at) for n, s in samples.items()},
        engines=engines)


def _start_middle_end(samples: Sequence[RssSample], middle_at: float) -> list[float]:
    """The RSS at the start, at the half-way point (the first sample from it on) and at the
    end; fewer when there were fewer samples."""
    if not samples:
        return []
    middle = next((s for s in samples if s.seconds >= middle_at), samples[-1])
    picked = [samples[0], middle, samples[-1]]
    return [s.rss_mib for i, s in enumerate(picked) if i == 0 or s is not picked[i - 1]]


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:+.2f}{unit}"


def print_result(result: ChurnResult) -> None:
    print(f"churn: {result.processes} processes, {result.migrations} migrations, "
          f"{result.seconds:.0f} s")
    for name, rss in result.rss_mib.items():
        per_100 = result.rss_slope_mib_per_100[name]
        print(f"  {name}: worker RSS {' -> '.join(f'{x:.1f}' for x in rss)} MiB "
              f"(start, half-way, end), slope {_num(per_100)} MiB/100 processes")
        st = result.steady[name]
        print(f"    second half ({st.samples} samples from {st.half_at:.0f} s, "
              f"{result.engines.get(name, '?')} engine), MiB/min and MiB to the end: "
              + ", ".join(f"{part} {_num(st.mib_per_min[part])} {_num(st.growth_mib[part])}"
                          for part in PARTS))
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
    parser.add_argument("--sample-every", type=float, default=SAMPLE_EVERY, metavar="SECONDS",
                        help="seconds between two samples of the machine actors' memory "
                             f"(default {SAMPLE_EVERY:g})")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    ns = parser.parse_args(argv)
    spec = ChurnSpec(ns.processes, ns.rate, ns.machines, ns.seed)
    try:
        spec.check()
        if ns.sample_every <= 0:
            raise UsageError(f"--sample-every {ns.sample_every}: use a positive number of "
                             "seconds")
    except UsageError as exc:
        parser.error(str(exc))
    result = run_churn(spec, address=ns.address, sample_every=ns.sample_every)
    print_result(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
