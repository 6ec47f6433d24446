"""Migrations by how they moved (stop-and-copy or pre-copy): per mode, how long the process
did not run (the freeze) against the whole move, the live rounds, and the bytes sent while it
ran and while it was frozen. `top`, timeline.png and report.json read them from here, so the
three say the same thing the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tender_ray.migration.record import MigrationRecord

MIB = 1 << 20


@dataclass(frozen=True)
class ModeSummary:
    """The successful migrations of one mode, summed: `count` of them (`failed` more that did
    not move), their total and freeze seconds (sum, median, largest), live rounds and bytes
    (`live_bytes` sent while the process ran, `freeze_bytes` while it was frozen)."""

    mode: str
    count: int
    failed: int
    seconds: float
    seconds_max: float
    freeze_seconds: float
    freeze_p50: float
    freeze_max: float
    rounds: int
    bytes: int
    live_bytes: int
    freeze_bytes: int

    @property
    def freeze_share(self) -> float:
        """The freeze's share of the moves' time (0 with none)."""
        return self.freeze_seconds / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "failed": self.failed, "seconds": self.seconds,
                "seconds_max": self.seconds_max, "freeze_seconds": self.freeze_seconds,
                "freeze_p50": self.freeze_p50, "freeze_max": self.freeze_max,
                "freeze_share": self.freeze_share, "rounds": self.rounds,
                "bytes": self.bytes, "live_bytes": self.live_bytes,
                "freeze_bytes": self.freeze_bytes}


def live_bytes(record: MigrationRecord) -> int:
    """Bytes the record's live rounds sent while the process ran (0 for stop-and-copy)."""
    return sum(record.round_bytes)


def _median(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarise_modes(records: Iterable[MigrationRecord]) -> dict[str, ModeSummary]:
    """{mode: its summary}, modes in name order; failed moves are only counted (what they
    sent or froze is not a move's cost)."""
    by_mode: dict[str, list[MigrationRecord]] = {}
    for r in records:
        by_mode.setdefault(r.mode, []).append(r)
    out: dict[str, ModeSummary] = {}
    for mode in sorted(by_mode):
        ok = [r for r in by_mode[mode] if r.ok]
        freezes = [r.freeze_seconds for r in ok]
        out[mode] = ModeSummary(
            mode=mode, count=len(ok), failed=len(by_mode[mode]) - len(ok),
            seconds=sum(r.seconds for r in ok),
            seconds_max=max((r.seconds for r in ok), default=0.0),
            freeze_seconds=sum(freezes), freeze_p50=_median(freezes),
            freeze_max=max(freezes, default=0.0), rounds=sum(r.rounds for r in ok),
            bytes=sum(r.bytes for r in ok), live_bytes=sum(live_bytes(r) for r in ok),
            freeze_bytes=sum(r.freeze_bytes for r in ok))
    return out


def move_parts(record: MigrationRecord) -> tuple[list[str], list[str]]:
    """How one migration moved, in words, as two lists: its time (mode, freeze against total,
    rounds) and what it sent (bytes, live and frozen for a pre-copy, and whether its text was
    shared rather than sent)."""
    timing = [record.mode,
              f"froze {record.freeze_seconds * 1000:.1f} of {record.seconds * 1000:.1f} ms"]
    if record.rounds:
        timing.append(f"{record.rounds} round{'' if record.rounds == 1 else 's'}")
    sent = f"{record.bytes / MIB:.1f} MiB"
    live = live_bytes(record)
    if live:
        sent += f" ({live / MIB:.1f} live, {record.freeze_bytes / MIB:.1f} frozen)"
    size = [sent]
    if record.text_shared:
        size.append("text shared")
    return timing, size


def describe_mode(m: ModeSummary) -> str:
    """One mode's moves as a person reads them: how many, the freeze against their whole
    time, rounds and bytes (`top` and the scenario summary)."""
    failed = f" ({m.failed} failed)" if m.failed else ""
    return (f"{m.mode}: {m.count} moved{failed} · froze {m.freeze_seconds * 1000:.1f} of "
            f"{m.seconds * 1000:.1f} ms ({m.freeze_share:.0%}), longest freeze "
            f"{m.freeze_max * 1000:.1f} ms · {m.rounds} rounds · "
            f"{m.bytes / (1 << 20):.1f} MiB ({m.live_bytes / (1 << 20):.1f} live)")


def describe_move(record: MigrationRecord) -> str:
    """One migration's mode, freeze against total time, rounds and bytes, as a person reads
    them: `precopy · froze 3.1 of 40.2 ms · 3 rounds · 12.0 MiB (11.5 live, 0.5 frozen)`;
    a stop-and-copy move has no rounds and sends everything frozen."""
    timing, size = move_parts(record)
    return " · ".join([*timing, *size])
