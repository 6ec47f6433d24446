"""The record of one migration: who moved where, how, how long each phase took and how it
ended. Frozen, and passed as itself between machines, balancer, metrics and views; turned into
a plain mapping only at the edges (JSON reports, `--stats`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Outcome(str, enum.Enum):
    """What became of one migration (by its id) as its destination tells it."""

    PENDING = "pending"  # under way: created, maybe transformed, not committed
    COMMITTED = "committed"  # the process is the destination's: the source must delete it
    ABORTED = "aborted"  # given up (by the source, or a failed step): the source keeps it
    EXPIRED = "expired"  # the source was silent past the lease: released, may not commit
    UNKNOWN = "unknown"  # never heard of (or forgotten, or the machine is a new one)

# The paper's phases: the destination's own work (create, transform I-III) and the source's
# delete.
PHASES = ("create", "transform_space", "transform_program", "transform_start", "delete")
# Also timed, around the paper's phases: a pre-copy's live rounds (the process still running),
# stopping the process, putting its pages into the transport, the round trips of the create
# and transform calls (the phases themselves are the destination's own work), and the
# destination's confirmation.
EXTRA_PHASES = ("precopy", "freeze", "create_call", "export", "transform_call", "commit")


@dataclass(frozen=True)
class MigrationRecord:
    """What one migration did, as `--stats`, reports, metrics and `top` show it."""

    pid: int
    source: str
    destination: str
    transfer: str
    reuse: bool
    resources: str
    seconds: float = 0.0
    bytes: int = 0
    pages: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    # When each phase began, seconds after the migration's start (`started_at`); a phase
    # without one (a same-machine move times none) is taken to follow the one before it.
    phase_starts: dict[str, float] = field(default_factory=dict)
    result: str = "ok"  # "ok" or "failed"
    error: str = ""
    started_at: float = 0.0  # time.time() when it began
    reason: str = ""  # why the balancer moved it ("drain", a policy name); "" if asked for
    migration_id: str = ""  # the id every call of this migration carried (source: protocol)
    # Of `pages`, the text pages that travelled: 0 when the destination already held the
    # same text and mapped its frames (`text_shared`), or reloaded it from the plate.
    text_pages: int = 0
    text_shared: bool = False
    # How it moved: "stop" (stop-and-copy) or "precopy" (asked for, or chosen by "auto").
    mode: str = "stop"
    # Pre-copy: the live rounds (copies made while the process ran at the source; the first
    # holds every page) and the bytes each sent; then the bytes sent while it was frozen.
    rounds: int = 0
    round_bytes: tuple[int, ...] = ()
    freeze_bytes: int = 0
    # The time the process did not run: from the freeze to the destination's commit (a
    # stop-and-copy move's whole transfer; a pre-copy's last round, registers and commit).
    freeze_seconds: float = 0.0
    # Bytes per second the process wrote during its last live round (0: not measured), which
    # an "auto" move of the same process reads.
    dirty_rate: float = 0.0
    copy_rate: float = 0.0  # bytes per second its first live round copied at (0: none)

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    @property
    def text_bytes(self) -> int:
        """Bytes of text pages that travelled."""
        return self.text_pages * 4096

    @property
    def strategy(self) -> str:
        """The strategy in one low-cardinality word, as metrics label it: the transfer ("dsm",
        "plate", "space" for a same-machine move), then "+noreuse" and "+all" where they
        apply."""
        name = self.transfer
        if not self.reuse:
            name += "+noreuse"
        if self.resources == "all":
            name += "+all"
        return name

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (the shape of report.json and `--stats`)."""
        out: dict[str, Any] = {
            "pid": self.pid, "from": self.source, "to": self.destination,
            "seconds": self.seconds, "bytes": self.bytes, "pages": self.pages,
            "phases": dict(self.phases), "phase_starts": dict(self.phase_starts),
            "transfer": self.transfer, "reuse": self.reuse,
            "resources": self.resources, "result": self.result, "error": self.error,
            "started_at": self.started_at, "text_bytes": self.text_bytes,
            "text_shared": self.text_shared, "mode": self.mode, "rounds": self.rounds,
            "round_bytes": list(self.round_bytes), "freeze_bytes": self.freeze_bytes,
            "freeze_seconds": self.freeze_seconds, "dirty_rate": self.dirty_rate,
            "copy_rate": self.copy_rate}
        if self.reason:
            out["reason"] = self.reason
        if self.migration_id:
            out["migration_id"] = self.migration_id
        return out


def log_migration(record: MigrationRecord) -> None:
    """Log a finished migration, one line per phase (pid, source, destination, phase, seconds,
    transfer), then one line for the whole of it."""
    from tender_ray import logs

    log = logs.get("migration").bind(
        migration=f"{record.source}:{record.pid}:{record.started_at:.6f}", pid=record.pid,
        source=record.source, destination=record.destination, transfer=record.transfer,
        reuse=record.reuse, resources=record.resources)
    for phase, seconds in record.phases.items():
        log.info("migration phase", phase=phase, seconds=round(seconds, 6))
    done = log.info if record.ok else log.warning
    done("migration " + record.result, seconds=round(record.seconds, 6), bytes=record.bytes,
         pages=record.pages, mode=record.mode, rounds=record.rounds,
         freeze_seconds=round(record.freeze_seconds, 6),
         **({"error": record.error} if record.error else {}))
