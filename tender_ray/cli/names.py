"""What a person reads for a migration's phases and a process, in one place: the paper's phase
names (transform I, II, III) for the record's field names, and a process named as the report
names it (`sieve#0`) or, with no report, by its program and pid. The figures, the scenario
summary, `top` and the commands all say it this way; report.json, `--stats` and the metrics
keep the field names (the README explains them once).
"""

from __future__ import annotations

from collections.abc import Mapping

# A migration's phases in the order it goes through them, each with the name users read. The
# destination's create and transform calls carry its own phases; their round trips ("call")
# are what the calls cost beyond that work.
PHASE_NAMES: dict[str, str] = {
    "precopy": "pre-copy (live rounds)",
    "freeze": "freeze",
    "create": "create",
    "create_call": "create call",
    "export": "export",
    "transform_space": "transform I (space)",
    "transform_program": "transform II (program)",
    "transform_start": "transform III (start)",
    "transform_call": "transform call",
    "commit": "commit",
    "delete": "delete",
}


def phase_name(field: str) -> str:
    """The name users read for the phase a record calls `field` (unknown ones as they are)."""
    return PHASE_NAMES.get(field, field.replace("_", " "))


def ordered_phases(phases: Mapping[str, float]) -> list[tuple[str, float]]:
    """(field, seconds) in the order a migration goes through its phases, unknown ones last."""
    known = [(p, phases[p]) for p in PHASE_NAMES if p in phases]
    return known + [(p, s) for p, s in phases.items() if p not in PHASE_NAMES]


def describe_phases(phases: Mapping[str, float], separator: str = ", ") -> str:
    """A migration's phases in milliseconds, by their names: `freeze 0.41 ms, create ...`."""
    return separator.join(f"{phase_name(p)} {seconds * 1000:.2f} ms"
                          for p, seconds in ordered_phases(phases))


def process_label(pid: int, names: Mapping[int, str] | None = None, program: str = "") -> str:
    """A process as users read it: its report name (`sieve#0`) when `names` has it, else its
    program and pid (`sieve 1001000`), else `pid 1001000`."""
    if names and pid in names:
        return names[pid]
    return f"{program} {pid}" if program else f"pid {pid}"
