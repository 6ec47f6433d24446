"""`tender-ray top`: a live terminal view of a running cluster.

Machines (load, run queue, real-memory frames, state), the processes and where they run, and
the last migrations with how each moved (mode, freeze against total time, rounds, bytes), the
time of each phase (by the paper's names: transform I, II, III) and, for one that failed,
why; redrawn in place every `interval` seconds.
`render` draws one frame from plain snapshots (no Ray, testable); `gather` asks the machines
through their handles, and `run_top` loops the two.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tender_ray.balancing.client import Pending
from tender_ray.balancing.state import BalancerState
from tender_ray.cli.names import describe_phases, process_label
from tender_ray.errors import TenderError
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.metrics.collector import frames_by_state
from tender_ray.metrics.modes import describe_mode, describe_move, summarise_modes
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.real_memory import PAGE_SIZE

MAX_PROCESSES = 20
MAX_MIGRATIONS = 5


class MachineSource(Protocol):
    """What `top` needs of a machine: cluster.MachineHandle fits."""

    @property
    def name(self) -> str: ...
    def statistics_async(self) -> Pending[MachineStatistics]: ...
    def list_processes_async(self) -> Pending[list[ProcessInfo]]: ...
    def recent_migrations_async(self) -> Pending[list[MigrationRecord]]: ...


@dataclass
class Snapshot:
    """One look at the cluster."""

    machines: dict[str, MachineStatistics] = field(default_factory=dict)
    processes: list[ProcessInfo] = field(default_factory=list)
    migrations: list[MigrationRecord] = field(default_factory=list)
    down: dict[str, str] = field(default_factory=dict)  # machine -> why it did not answer
    balancer: BalancerState | None = None


def gather(handles: Sequence[MachineSource], timeout: float = 5.0,
           balancer: Callable[[], BalancerState | None] | None = None) -> Snapshot:
    """Ask every machine at once for its statistics, processes and recent migrations."""
    pending = {h.name: (h.statistics_async(), h.list_processes_async(),
                        h.recent_migrations_async()) for h in handles}
    snap = Snapshot()
    for name, (s_reply, p_reply, r_reply) in pending.items():
        try:
            stats = s_reply.result(timeout)
            procs = p_reply.result(timeout)
            records = r_reply.result(timeout)
        except TenderError as exc:
            snap.down[name] = str(exc)
            continue
        snap.machines[name] = stats
        snap.processes.extend(procs)
        snap.migrations.extend(records)
    if balancer is not None:
        try:
            snap.balancer = balancer()
        except Exception:  # no balancer, or it stopped: the view goes on without it
            snap.balancer = None
    return snap


def _mib(frames: int) -> str:
    return f"{frames * PAGE_SIZE / (1 << 20):.1f}"


def _machines_table(snapshots: Mapping[str, MachineStatistics],
                    processes: Sequence[ProcessInfo], down: Mapping[str, str]) -> Table:
    t = Table(title="machines (load: runnable per computation; frames of 4 KiB)",
              title_justify="left", expand=True, box=None, header_style="bold")
    for col, right in (("machine", False), ("state", False), ("load", True),
                       ("runnable", True), ("procs", True), ("free", True), ("used", True),
                       ("held", True), ("util", True), ("out/in", True)):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    by_machine: dict[str, list[ProcessInfo]] = {}
    for p in processes:
        by_machine.setdefault(p.machine, []).append(p)
    for name in sorted({*snapshots, *down}):
        s = snapshots.get(name)
        if s is None:
            t.add_row(name, "[red]down[/red]", *[""] * 8)
            continue
        frames = frames_by_state(s, by_machine.get(name, []))
        state = ("[red]stopped[/red]" if s.state != "running" else
                 "[yellow]draining[/yellow]" if s.cordoned else "[green]up[/green]")
        live = sum(n for st, n in s.processes.items() if st != "zombie")
        out = sum(n for k, n in s.migrations.items() if k.startswith("out_ok"))
        into = sum(n for k, n in s.migrations.items() if k.startswith("in_ok"))
        t.add_row(name, state, f"{s.load:.2f}", str(s.runnable), str(live),
                  str(frames["free"]), str(frames["used"]), str(frames["held"]),
                  f"{s.utilisation:.0%}", f"{out}/{into}")
    return t


def _processes_table(processes: Sequence[ProcessInfo], limit: int) -> Table:
    t = Table(title="processes", title_justify="left", expand=True, box=None,
              header_style="bold")
    for col, right in (("pid", True), ("name", False), ("state", False), ("machine", False),
                       ("cpu s", True), ("run s", True), ("MiB", True), ("moves", True)):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    live = sorted((p for p in processes if p.state != "zombie"),
                  key=lambda p: (p.machine, p.pid))
    ended = [p for p in processes if p.state == "zombie"]
    for p in live[:limit]:
        style = {"running": "green", "frozen": "cyan", "sleeping": "dim"}.get(p.state, "")
        moves = sum(1 for m in p.migrations if m.ok)
        t.add_row(str(p.pid), p.name, Text(p.state, style=style), p.machine,
                  f"{p.cpu_seconds:.2f}", f"{p.run_seconds:.1f}", _mib(p.resident_pages),
                  str(moves))
    more = len(live) - limit
    if more > 0 or ended:
        note = [f"{more} more" if more > 0 else "", f"{len(ended)} ended, not reaped"
                if ended else ""]
        t.add_row("", Text(", ".join(n for n in note if n), style="dim"), *[""] * 6)
    return t


def _phases(record: MigrationRecord) -> str:
    return "phases: " + describe_phases(record.phases, " · ")


def _migrations_view(migrations: Sequence[MigrationRecord], limit: int, now: float,
                     programs: Mapping[int, str] | None = None) -> Group:
    """The last migrations, newest first: one line each, naming the process by its program
    and pid (`programs`: pid -> program name, from the processes shown), its phases below it,
    and for one that failed, why."""
    lines: list[RenderableType] = [Text("recent migrations", style="bold")]
    lines.extend(Text("  " + describe_mode(m), style="bold")
                 for m in summarise_modes(migrations).values())
    recent = sorted(migrations, key=lambda r: r.started_at, reverse=True)[:limit]
    for r in recent:
        ago = max(0.0, now - r.started_at)
        who = process_label(r.pid, program=(programs or {}).get(r.pid, ""))
        lines.append(Text.assemble(
            f"{ago:>5.0f}s ago  {who}  {r.source} → {r.destination}  ",
            (r.result, "green" if r.ok else "red"),
            f"  {r.strategy}  {r.bytes / (1 << 20):.1f} MiB  {r.seconds * 1000:.1f} ms"))
        if not r.ok:
            lines.append(Text("    why: " + (r.error or "no reason recorded"), style="red"))
        else:  # how it moved: its mode, the freeze against the whole, rounds and bytes
            lines.append(Text("    " + describe_move(r)))
        lines.append(Text("    " + _phases(r), style="dim"))
    if not recent:
        lines.append(Text("none yet", style="dim"))
    return Group(*lines)


def _balancer_line(balancer: BalancerState | None) -> Text:
    if balancer is None:
        return Text("balancer: none", style="dim")
    policy = balancer.policy or "?"
    drains = list(balancer.drains)
    ok = sum(1 for d in drains if d.ok)
    return Text(f"balancer: policy {policy} · rounds {balancer.rounds} · decisions "
                f"{balancer.decisions} · migrations {len(balancer.migrations)} · failures "
                f"{len(balancer.failures)} · drains {ok}/{len(drains)} ok")


def render(snapshots: Mapping[str, MachineStatistics], processes: Sequence[ProcessInfo],
           migrations: Sequence[MigrationRecord], *, down: Mapping[str, str] | None = None,
           balancer: BalancerState | None = None, title: str = "tender-ray top",
           max_processes: int = MAX_PROCESSES, max_migrations: int = MAX_MIGRATIONS,
           now: float | None = None) -> RenderableType:
    """One frame of the view: machines, processes, recent migrations with phase times."""
    now = time.time() if now is None else now
    down = down or {}
    head = Text.assemble((title, "bold"), f"  {time.strftime('%H:%M:%S', time.localtime(now))}"
                         f"  {len(snapshots)} machine{'' if len(snapshots) == 1 else 's'} up"
                         + (f", {len(down)} down" if down else "")
                         + f", {sum(1 for p in processes if p.state != 'zombie')} processes")
    parts: list[RenderableType] = [head, _balancer_line(balancer),
                                   _machines_table(snapshots, processes, down),
                                   _processes_table(processes, max_processes),
                                   _migrations_view(migrations, max_migrations, now,
                                                    {p.pid: p.name for p in processes})]
    for name, why in sorted(down.items()):
        parts.append(Text(f"{name}: {why}", style="red"))
    return Panel(Group(*parts), title=title, border_style="blue")


def render_snapshot(snap: Snapshot, **kwargs: Any) -> RenderableType:
    return render(snap.machines, snap.processes, snap.migrations, down=snap.down,
                  balancer=snap.balancer, **kwargs)


QUIT_KEYS = frozenset("qQ")


@contextlib.contextmanager
def _keys_mode(keys: IO[str] | None) -> Iterator[None]:
    """A terminal's keys one at a time, unechoed (Ctrl-C still interrupts), while `top`
    runs; the terminal as it was afterwards. Anything else (a pipe, none) is left alone."""
    if keys is None or not keys.isatty():
        yield
        return
    import termios
    import tty

    fd = keys.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_quit(keys: IO[str] | None, seconds: float) -> bool:
    """Wait `seconds`, or less if a key comes: whether it was one that quits (q).
    End of input does not quit: the view goes on, sleeping instead."""
    if keys is None:
        time.sleep(seconds)
        return False
    deadline = time.monotonic() + seconds
    fd = keys.fileno()
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        data = os.read(fd, 64).decode(errors="replace")  # unbuffered: select saw the fd
        if not data:  # end of input: nothing will ever come
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False
        if QUIT_KEYS & set(data):
            return True
    return False


def run_top(handles: Sequence[MachineSource] | Callable[[], Sequence[MachineSource]],
            interval: float = 1.0, *,
            balancer: Callable[[], BalancerState | None] | None = None,
            console: Console | None = None, once: bool = False,
            iterations: int | None = None, keys: IO[str] | None = None) -> None:
    """Draw the cluster every `interval` seconds, in place, until q on `keys` (the terminal),
    Ctrl-C, or `iterations` frames; `once` prints a single frame. `handles` may be a
    callable, asked again at every frame, when machines come and go."""
    console = console or Console()

    def frame() -> RenderableType:
        current = handles() if callable(handles) else handles
        return render_snapshot(gather(current, balancer=balancer))

    if once:
        console.print(frame())
        return
    drawn = 0
    try:
        with _keys_mode(keys), Live(frame(), console=console, auto_refresh=False,
                                    screen=False, transient=False) as live:
            drawn = 1
            while iterations is None or drawn < iterations:
                if wait_for_quit(keys, interval):
                    break
                live.update(frame(), refresh=True)
                drawn += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a view is left: not an error
