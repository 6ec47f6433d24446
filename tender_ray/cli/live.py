"""What a person sees while a scenario runs and after: the live view of a run and the summary
tables of its report. Views only: `cli.scenario.run.run_live` drives the run and draws this."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tender_ray.cli.names import process_label
from tender_ray.cli.scenario.report import Report
from tender_ray.metrics.modes import describe_mode, summarise_modes

if TYPE_CHECKING:  # the view reads a run; it does not start one (that needs the Ray layer)
    from tender_ray.cli.scenario.run import ScenarioRun

MACHINE_COLUMNS = ("machine", "load", "runnable", "processes", "free memory", "state")


def scenario_view(run: ScenarioRun, log: Sequence[str]) -> Panel:
    """One frame of a running scenario: its machines, progress and the last events."""
    # Headers in bold over a rule: without them the numbers of a row say nothing.
    table = Table(title="machines (load: runnable per computation)", title_justify="left",
                  expand=True, box=box.SIMPLE_HEAD, show_header=True, header_style="bold",
                  show_edge=False, pad_edge=False)
    for col in MACHINE_COLUMNS:
        table.add_column(col, justify="right" if col != "machine" else "left")
    for name, poll in sorted(run.last_poll.items()):
        s = poll.statistics
        table.add_row(name, f"{s.load:.2f}", str(s.runnable), str(len(poll.processes)),
                      f"{s.memory.frames_free * 4 // 1024} MiB",
                      "[yellow]cordoned[/yellow]" if s.cordoned else "[green]up[/green]")
    total = len(run.arrivals)
    done = sum(1 for t in run.tracked.values() if t.ended or t.lost)
    started = sum(1 for a in run.arrivals if a.started is not None)
    moved = sum(p.statistics.migrations.get("out_ok", 0) for p in run.last_poll.values())
    head = Text.assemble(
        (f"{run.scenario.name}", "bold"), f"  policy {run.policy.value}  ",
        f"t={run.elapsed:5.1f}s  started {started}/{total}  finished {done}/{total}  "
        f"queued {len(run.queue)}  migrations {moved}")
    bar = ProgressBar(total=max(total, 1), completed=done)
    return Panel(Group(head, bar, table, Text("\n".join(log), style="dim")),
                 title="tender-ray run")


def print_summary(report: Report, report_dir: Path | None) -> None:
    console = Console()
    t = Table(title=f"{report.scenario} — policy {report.policy.value}")
    for col in ("process", "exit", "native output", "machines", "cpu s", "run s"):
        t.add_column(col, justify="left" if col in ("process", "machines") else "right")
    for p in report.processes:
        match = p.output_matches_native
        t.add_row(p.name, str(p.exit_status),
                  "[green]same[/green]" if match else ("n/a" if match is None else
                                                      "[red]DIFFERENT[/red]"),
                  " → ".join(p.machines), f"{p.cpu_seconds:.2f}",
                  f"{p.run_seconds:.2f}" if p.run_seconds is not None else "-")
    console.print(t)
    ratio = report.makespan_over_ideal
    used = report.parallelism
    console.print(
        f"makespan {report.makespan_seconds:.2f}s, ideal "
        f"{report.ideal_makespan_seconds:.2f}s (ratio {ratio:.2f}; parallelism "
        f"{used.used}: {used.computations} computations on {used.host_cores} host cores), "
        f"{report.migrations.count} migrations, "
        f"{report.migrations.bytes / (1 << 20):.1f} MiB moved" if ratio else
        "no process finished")
    for m in summarise_modes(report.migrations.records).values():
        console.print(f"  {describe_mode(m)}")
    names = report.process_names()
    for d in report.drains:
        left = ", ".join(process_label(pid, names) for pid in d.left)
        console.print(f"drain of {d.machine}: {len(d.moved)} moved in "
                      f"{d.seconds:.2f}s (deadline {d.deadline:.0f}s), "
                      f"{'ok' if d.ok else 'left ' + left}"
                      + (f" ({d.why})" if d.why else ""))
    for e in report.events_failed:
        console.print(f"[red]event failed[/red] t={e.at:.1f}s {e.action.value} {e.machine}: "
                      f"{e.error}")
    for lost in report.lost:
        console.print(f"[red]lost[/red] {lost.name} with machine {lost.machine} ({lost.reason})")
    for r in report.restarts:
        console.print(f"restarted {r.name} on {r.machine} after {r.lost_machine} crashed, from "
                      f"checkpoint {r.checkpoint_seq} ({r.checkpoint_age_seconds:.1f} s old)")
    ages = report.checkpoint_ages
    if ages is not None and ages.max_seconds is not None:
        worst = ages.per_process[0]
        console.print(f"checkpoint age: at most {ages.max_seconds:.2f}s ({worst[0]}, whose "
                      f"slowest checkpoint took {worst[3]:.2f}s; every {ages.every}s, the "
                      f"promise is {2 * (ages.every or 0):.2f}s)")
    for q in report.queued:
        console.print(f"queued {q.name}: {q.reason}"
                      + (f" (waited {q.waited_seconds:.1f}s)" if q.waited_seconds else ""))
    for n in report.not_started:
        console.print(f"[red]not started[/red] {n.name}: {n.reason}")
    if report_dir is not None:
        console.print(f"report: {report_dir / 'report.json'}, {report_dir / 'load.png'}, "
                      f"{report_dir / 'timeline.png'}")


def print_compare(reports: list[Report]) -> None:
    t = Table(title=f"{reports[0].scenario}: policies compared")
    for col in ("policy", "makespan s", "makespan ÷ ideal", "mean slowdown", "migrations",
                "bytes moved", "native output"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    for r in reports:
        t.add_row(r.policy.value, f"{r.makespan_seconds:.2f}",
                  f"{r.makespan_over_ideal:.3f}" if r.makespan_over_ideal else "-",
                  f"{r.mean_slowdown:.2f}" if r.mean_slowdown else "-",
                  str(r.migrations.count),
                  f"{r.migrations.bytes / (1 << 20):.1f} MiB",
                  "all same" if r.all_match_native else "[red]differs[/red]")
    Console().print(t)
