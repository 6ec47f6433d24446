"""tender_ray side by side with what a Ray user runs instead: the same program binaries with
the same arguments as plain Ray tasks (each running the program as a subprocess, `num_cpus=1`,
retried by Ray) and as tender_ray processes with the balancer on, on the same Ray cluster in
the same run, on nodes pinned to real cores. Four cases, each a scenario in configs/
(`vs-ray-<case>.yaml`, runnable alone with `tender-ray run`): a preempted node (Ray's drain
notice, the node removed at its deadline), a node joining while jobs run, jobs whose lengths
differ tenfold, and a plain queue of equal jobs. Reported per case: both makespans, the ideal
one (the jobs' CPU seconds over the cores there were, as they came and went), the CPU seconds of
work thrown away (killed attempts that Ray retried; processes tender_ray lost or restarted),
and whether every output of both sides equals the native run's.

    tender-ray bench vs-ray [--cases preemption,scale_out,skew,queue] [--json vs_ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tender_ray.cli.scenario.model import EventAction, Scenario, load_scenario
from tender_ray.cli.scenario.report import Report
from tender_ray.errors import UsageError

CASES = ("preemption", "scale_out", "skew", "queue")
QUICK_SCALE = 0.3  # --quick: jobs and event times this fraction of the files'
MIN_DEADLINE = 2.0  # seconds: a scaled drain's notice is never shorter
TIMEOUT = 600.0  # seconds one side of one case may take


# --- the pure parts: capacity, the ideal, lost work, outputs ------------------------------

def capacity(scenario: Scenario) -> list[tuple[float, int]]:
    """Cores over time, as (from seconds, cores) steps: one per machine of the scenario (each
    is a node pinned to one core), one more at each `add_machine`, one fewer at each
    `stop_machine` or `crash_machine` (the node removed)."""
    cores = len(scenario.machine_configs())
    steps = [(0.0, cores)]
    for e in sorted(scenario.events, key=lambda e: e.at):
        if e.action is EventAction.ADD_MACHINE:
            cores += 1
        elif e.action in (EventAction.STOP_MACHINE, EventAction.CRASH_MACHINE):
            cores -= 1
        else:
            continue
        steps.append((e.at, cores))
    return steps


def ideal_makespan(jobs: Sequence[tuple[float, float]], steps: Sequence[tuple[float, int]]
                   ) -> float:
    """The least makespan possible for `jobs` ((arrival, CPU seconds) each) on the cores of
    `steps`: the time by which the cores there were could have done all the work, and no
    sooner than the longest job can end (one job runs on one core at a time)."""
    work = sum(cpu for _, cpu in jobs)
    done, t = 0.0, 0.0
    for i, (start, cores) in enumerate(steps):
        end = steps[i + 1][0] if i + 1 < len(steps) else float("inf")
        if cores > 0 and done + cores * (end - start) >= work:
            t = start + (work - done) / cores
            break
        done += max(cores, 0) * (end - start)
    else:
        t = float("inf")  # the cores went before the work was done
    return max([t, *(at + cpu for at, cpu in jobs)])


def ray_lost_cpu(attempts: Sequence[Any]) -> float:
    """CPU seconds of the attempts that never ended (killed with their node; Ray ran the job
    again from the start): each as its last report said."""
    return sum(a.cpu_seconds for a in attempts if a.ended is None)


def tender_lost_cpu(report: Report) -> float:
    """CPU seconds tender_ray threw away: the processes it lost, and for each restart from a
    checkpoint the time since that checkpoint (run again)."""
    lost = {x.pid for x in report.lost}
    return (sum(p.cpu_seconds for p in report.processes if p.pid in lost)
            + sum(r.checkpoint_age_seconds for r in report.restarts))


def outputs_native(native: Sequence[bytes | None], ray: Sequence[bytes | None],
                   tender: Sequence[bytes | None]) -> bool:
    """Every job's output on both sides equals its native run's (None: the job has no
    output there: it failed, was lost, or never ran)."""
    return (len(native) == len(ray) == len(tender)
            and all(n is not None and n == r == t for n, r, t in zip(native, ray, tender,
                                                                     strict=True)))


@dataclass(frozen=True)
class CaseResult:
    """One case side by side (seconds), with what explains it."""

    tender_makespan: float | None
    ray_makespan: float | None
    ideal_makespan: float
    tender_lost_cpu_seconds: float
    ray_lost_cpu_seconds: float
    outputs_native: bool
    jobs: int
    cpu_seconds: float  # the jobs' native CPU seconds, what the ideal is made of
    ray_attempts: int
    ray_failed: tuple[str, ...]
    tender_migrations: int
    tender_lost: tuple[str, ...]
    description: str
    # Every Ray attempt: job, node, start and end (seconds after the start; None: killed)
    # and its CPU seconds; and each Ray node drain tender_ray's balancer followed.
    ray_attempt_log: tuple[dict[str, Any], ...] = ()
    tender_node_drains: tuple[dict[str, Any], ...] = ()
    # CPU seconds each side's programs used (retries and lost work included): over the
    # makespan, how much of the cores each side got on a shared host.
    ray_cpu_seconds: float = 0.0
    tender_cpu_seconds: float = 0.0

    @property
    def ratio(self) -> float | None:
        if self.tender_makespan is None or not self.ray_makespan:
            return None
        return self.tender_makespan / self.ray_makespan


def assemble(cases: dict[str, CaseResult], **about: Any) -> dict[str, Any]:
    """The JSON of a run: per case the six figures the issue asks for, then the rest."""
    out: dict[str, Any] = {"cases": {}}
    for name, c in cases.items():
        out["cases"][name] = {**asdict(c), "tender_over_ray": c.ratio}
    out.update(about)
    return out


# --- native runs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Native:
    stdout: bytes
    exit_status: int
    cpu_seconds: float


def run_native(program: Path, args: Sequence[str]) -> Native:
    """The program run natively here: its stdout, exit status and CPU seconds."""
    with subprocess.Popen([str(program), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Native(out, proc.returncode, usage.ru_utime + usage.ru_stime)


# --- the cases ----------------------------------------------------------------------------

def configs_dir() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):  # here, the checkout
        if (base / "configs" / "vs-ray-queue.yaml").is_file():
            return base / "configs"
    raise UsageError("configs/vs-ray-*.yaml not found; run from the tender_ray checkout or "
                     "pass --configs DIR")


def scaled(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every job's size (its first argument, a count) and every event time
    scaled by `factor`: the same case, shorter. A drain's deadline is scaled too but kept at
    least `MIN_DEADLINE` (a notice must leave time to act on it), and a machine stopped at
    its drain's deadline is stopped at the new one."""
    if factor == 1.0:
        return scenario
    workloads = [w.model_copy(update={"args": [str(max(1, int(int(w.args[0]) * factor))),
                                               *w.args[1:]]})
                 if w.args and w.args[0].isdigit() else w for w in scenario.workloads]
    events = []
    deadlines: dict[tuple[str, float], float] = {}  # (machine, old deadline time) -> new
    for e in sorted(scenario.events, key=lambda e: e.at):
        at = e.at * factor
        if e.action is EventAction.DRAIN:
            deadline = max(e.deadline * factor, min(e.deadline, MIN_DEADLINE))
            deadlines[e.machine, round(e.at + e.deadline, 6)] = at + deadline
            events.append(e.model_copy(update={"at": at, "deadline": deadline}))
            continue
        at = deadlines.get((e.machine, round(e.at, 6)), at)
        events.append(e.model_copy(update={"at": at}))
    return scenario.model_copy(update={"workloads": workloads, "events": events})


def run_case(name: str, path: Path, *, nodes: Any, factor: float, max_retries: int,
             report_dir: Path | None, note: Any) -> CaseResult:
    """Both sides of one case, Ray's first, each on the nodes of the scenario's machines (a
    node the events removed is started again between the sides, one they added stopped);
    the result side by side."""
    from tender_ray.bench import vs_ray_sides as sides

    scenario, programs = load_scenario(path)
    scenario = scaled(scenario, factor)
    jobs = sides.jobs_of(scenario, programs)
    natives: dict[tuple[Path, tuple[str, ...]], Native] = {}
    for _, program, args in jobs:
        if (program, args) not in natives:
            natives[program, args] = run_native(program, args)
    native = [natives[p, a] for _, p, a in jobs]
    cores = sides.node_cores(scenario, sides.host_cores())
    note(f"{name}: {len(jobs)} jobs, {sum(n.cpu_seconds for n in native):.1f} CPU s natively")

    sides.start_nodes(nodes, scenario, cores)
    note(f"{name}: nodes up; Ray tasks")
    ray_side = sides.run_ray_side(scenario, jobs, nodes, cores, max_retries=max_retries,
                                  note=lambda m: note(f"{name} ray: {m}"), timeout=TIMEOUT)
    sides.start_nodes(nodes, scenario, cores)  # again what the events took away or added
    note(f"{name}: nodes up; tender_ray")
    report = sides.run_tender_side(scenario, programs, nodes, cores,
                                   note=lambda m: note(f"{name} tender: {m}"),
                                   timeout=TIMEOUT,
                                   report_dir=report_dir / name if report_dir else None)
    return case_result(scenario, jobs, native, ray_side, report)


def case_result(scenario: Scenario, jobs: Sequence[tuple[float, Path, tuple[str, ...]]],
                native: Sequence[Native], ray_side: Any, report: Report) -> CaseResult:
    """The side-by-side figures of one case, from both sides' records."""
    ray_out = [ray_side.results[i].stdout if i in ray_side.results
               and ray_side.results[i].exit_status == native[i].exit_status else None
               for i in range(len(jobs))]
    # The scenario runner names its processes program#k in order of arrival, as jobs_of.
    by_order = {int(p.name.rpartition("#")[2]): p for p in report.processes}
    tender_out: list[bytes | None] = []
    for i in range(len(jobs)):
        p = by_order.get(i)
        same = (p is not None and p.exit_status == native[i].exit_status
                and p.output_matches_native is True)
        tender_out.append(native[i].stdout if same else None)
    ends = [p.started_at + p.run_seconds for p in report.processes
            if p.started_at is not None and p.run_seconds is not None
            and p.exit_status is not None]
    lost = {x.pid: x for x in report.lost}
    return CaseResult(
        tender_makespan=max(ends) if len(ends) == len(jobs) else None,
        ray_makespan=ray_side.makespan if not ray_side.errors else None,
        ideal_makespan=ideal_makespan([(at, n.cpu_seconds) for (at, _, _), n in
                                       zip(jobs, native, strict=True)], capacity(scenario)),
        tender_lost_cpu_seconds=tender_lost_cpu(report),
        ray_lost_cpu_seconds=ray_lost_cpu(ray_side.attempts),
        outputs_native=outputs_native([n.stdout for n in native], ray_out, tender_out),
        jobs=len(jobs), cpu_seconds=sum(n.cpu_seconds for n in native),
        ray_attempts=len(ray_side.attempts),
        ray_failed=tuple(f"job {j}: {e}" for j, e in sorted(ray_side.errors.items())),
        tender_migrations=report.migrations.count,
        tender_lost=tuple(f"{x.name}: {x.reason}" for x in lost.values()),
        description=scenario.description,
        ray_attempt_log=tuple(
            {"job": a.job, "node": a.node[:8], "started": round(a.started - ray_side.started, 3),
             "ended": None if a.ended is None else round(a.ended - ray_side.started, 3),
             "cpu_seconds": round(a.cpu_seconds, 3)}
            for a in sorted(ray_side.attempts, key=lambda a: a.started)),
        tender_node_drains=tuple(d.as_dict() for d in report.node_drains),
        ray_cpu_seconds=sum(a.cpu_seconds for a in ray_side.attempts),
        tender_cpu_seconds=sum(p.cpu_seconds for p in report.processes))


# --- output --------------------------------------------------------------------------------

def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(cases: dict[str, CaseResult]) -> str:
    """The markdown table of a run, as docs/benchmarks.md shows it."""
    rows = ["| case | tender_ray s | Ray tasks s | ideal s | tender ÷ Ray | CPU s lost: "
            "tender_ray | CPU s lost: Ray | Ray attempts / jobs | migrations | outputs "
            "native |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for name, c in cases.items():
        rows.append(f"| {name} | {_s(c.tender_makespan)} | {_s(c.ray_makespan)} | "
                    f"{c.ideal_makespan:.2f} | {_s(c.ratio)} | "
                    f"{c.tender_lost_cpu_seconds:.2f} | {c.ray_lost_cpu_seconds:.2f} | "
                    f"{c.ray_attempts} / {c.jobs} | {c.tender_migrations} | "
                    f"{'yes' if c.outputs_native else 'NO'} |")
    return "\n".join(rows)


def plot(cases: dict[str, CaseResult], path: Path) -> None:
    """Bars per case: tender_ray's makespan, Ray's and the ideal; the CPU seconds each side
    threw away, hatched on top of its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cases)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    width = 0.26
    for k, (label, color, get) in enumerate((
            ("tender_ray", "tab:blue", lambda c: c.tender_makespan),
            ("Ray tasks", "tab:orange", lambda c: c.ray_makespan),
            ("ideal", "tab:gray", lambda c: c.ideal_makespan))):
        xs = [i + (k - 1) * width for i in range(len(names))]
        values = [get(cases[n]) or 0.0 for n in names]
        ax.bar(xs, values, width, label=label, color=color)
        for x, v in zip(xs, values, strict=True):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8)
        if label != "ideal":
            lost = [cases[n].tender_lost_cpu_seconds if label == "tender_ray" else
                    cases[n].ray_lost_cpu_seconds for n in names]
            ax.bar(xs, lost, width, bottom=[v - x for v, x in zip(values, lost, strict=True)],
                   fill=False, hatch="///", edgecolor="black", linewidth=0)
    ax.bar([0], [0], fill=False, hatch="///", edgecolor="black", linewidth=0,
           label="CPU s thrown away")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("makespan, s")
    ax.set_title("The same programs: tender_ray processes vs Ray tasks (nodes pinned to cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None,
         prog: str = "python -m tender_ray.bench.vs_ray") -> int:
    """The command line; exit status 1 when an output differs from native or a side failed."""
    parser = argparse.ArgumentParser(
        prog=prog, description="The same programs as Ray tasks and as tender_ray processes, "
                               "side by side on Ray nodes pinned to cores: preemption, "
                               "scale-out, skew and a plain queue.")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"jobs and event times at {QUICK_SCALE} of the scenarios' (a "
                             "check that everything works, not a measurement)")
    parser.add_argument("--address", default=None,
                        help="a Ray cluster for the nodes to join (default: a head started "
                             "here on 127.0.0.1); the nodes are started on this host")
    parser.add_argument("--configs", type=Path, default=None, metavar="DIR",
                        help="where vs-ray-<case>.yaml are (default: the checkout's configs/)")
    parser.add_argument("--max-retries", type=int, default=3,
                        help="Ray's max_retries for each task (default 3, Ray's own)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="tender_ray's scenario report of each case (report.json, "
                             "load.png, timeline.png) and vs_ray.png (default: "
                             "reports/vs-ray-<time>)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    ns = parser.parse_args(argv)
    cases = [c.strip() for c in ns.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        parser.error(f"--cases: unknown cases {bad}; choose from {', '.join(CASES)}")
    if ns.max_retries < 0:
        parser.error("--max-retries must be 0 or more")
    try:
        base = ns.configs or configs_dir()
    except UsageError as exc:
        parser.error(str(exc))
    paths = {c: base / f"vs-ray-{c.replace('_', '-')}.yaml" for c in cases}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        parser.error(f"no such scenario: {', '.join(missing)}")
    report_dir = ns.report or Path("reports") / f"vs-ray-{time.strftime('%Y%m%d-%H%M%S')}"
    report_dir.mkdir(parents=True, exist_ok=True)
    results = run(paths, address=ns.address, factor=QUICK_SCALE if ns.quick else 1.0,
                  max_retries=ns.max_retries, report_dir=report_dir)
    print(table(results))
    plot(results, report_dir / "vs_ray.png")
    print(f"reports and figures: {report_dir}")
    if ns.json is not None:
        ns.json.write_text(json.dumps(assemble(results, quick=ns.quick,
                                               max_retries=ns.max_retries), indent=2) + "\n")
    ok = all(c.outputs_native and not c.ray_failed and not c.tender_lost
             for c in results.values())
    return 0 if ok else 1


def run(paths: dict[str, Path], *, address: str | None, factor: float, max_retries: int,
        report_dir: Path | None) -> dict[str, CaseResult]:
    """Every case of `paths` on one Ray cluster (a head started here unless `address`)."""
    from tender_ray.cluster.local_nodes import LocalNodes

    begun = time.monotonic()

    def note(message: str) -> None:
        print(f"  [{time.monotonic() - begun:6.1f}s] {message}", file=sys.stderr, flush=True)

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # so that the nodes started here are stopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    nodes = LocalNodes(address)
    try:
        nodes.connect()
        note(f"connected to {nodes.address}")
        return {name: run_case(name, path, nodes=nodes, factor=factor,
                               max_retries=max_retries, report_dir=report_dir, note=note)
                for name, path in paths.items()}
    finally:
        nodes.close()

if __name__ == "__main__":
    sys.exit(main())
