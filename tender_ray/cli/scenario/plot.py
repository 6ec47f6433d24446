"""load.png of a scenario report: each machine's load over the run, with the migrations and
the events (drains, stops, added machines) marked, and the samples it is drawn from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tender_ray.migration.record import MigrationRecord


@dataclass(frozen=True)
class LoadSample:
    """The load (runnable processes per computation) of every machine that answered one
    poll, `t` seconds after the start."""

    t: float
    loads: dict[str, float]


@dataclass(frozen=True)
class Mark:
    """An event on the time line: an action ("drain", "drained", "stop_machine", ...) on a
    machine."""

    t: float
    action: str
    machine: str


def plot_load(loads: list[LoadSample], marks: list[Mark], migrations: list[MigrationRecord],
              path: Path, title: str, t0: float) -> None:
    """Draw load.png at `path`: runnable processes per computation of each machine over time,
    with migrations (their `started_at`, wall time; `t0` is the wall time of t=0) and marks."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    names = sorted({n for s in loads for n in s.loads})
    for name in names:
        pts = [(s.t, s.loads[name]) for s in loads if name in s.loads]
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
    start = loads[0].t if loads else 0.0
    for i, m in enumerate(migrations):
        ax.axvline(m.started_at - t0, color="grey", alpha=0.25, lw=0.8,
                   label="migration" if i == 0 else None)
    for mark in marks:
        ax.axvline(mark.t, color="red", ls="--", lw=1)
        ax.annotate(f"{mark.action} {mark.machine}", (mark.t, ax.get_ylim()[1] * 0.95),
                    rotation=90, fontsize=7, color="red", va="top")
    ax.set_xlim(left=start)
    ax.set_xlabel("seconds")
    ax.set_ylabel("runnable processes per computation")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
