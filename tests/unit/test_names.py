"""One name per thing: a migration's phases by the paper's names wherever users read them, and a
process by the name the report gives it (report.json's migrations included)."""

from __future__ import annotations

from support.snapshots import record

from tender_ray.cli.names import PHASE_NAMES, describe_phases, phase_name, process_label
from tender_ray.cli.scenario.report import MigrationSummary
from tender_ray.migration.record import EXTRA_PHASES, PHASES


def test_every_recorded_phase_has_a_name() -> None:
    assert set(PHASES) | set(EXTRA_PHASES) == set(PHASE_NAMES)
    assert [phase_name(p) for p in ("transform_space", "transform_program",
                                    "transform_start")] == [
        "transform I (space)", "transform II (program)", "transform III (start)"]
    assert all("_" not in name for name in PHASE_NAMES.values())
    assert phase_name("stream_wait") == "stream wait"  # one this table does not know yet


def test_phases_are_described_in_the_order_they_ran() -> None:
    text = describe_phases({"delete": 0.002, "transform_start": 0.0031, "freeze": 0.0004,
                            "mystery": 0.001})
    assert text == ("freeze 0.40 ms, transform III (start) 3.10 ms, delete 2.00 ms, "
                    "mystery 1.00 ms")


def test_a_process_is_named_as_the_report_names_it() -> None:
    assert process_label(1001, {1001: "sieve#0"}, "sieve") == "sieve#0"
    assert process_label(1002, {1001: "sieve#0"}, "sieve") == "sieve 1002"
    assert process_label(1003) == "pid 1003"


def test_report_migrations_carry_the_process_name() -> None:
    moves = (record(1001, "m0", "m1", 1.0), record(1002, "m1", "m2", 2.0))
    summary = MigrationSummary(2, 0, moves, ())
    named = summary.as_dict({1001: "sieve#0"})["records"]
    assert [r.get("process") for r in named] == ["sieve#0", None]
    assert [r["pid"] for r in named] == [1001, 1002]
    assert "process" not in summary.as_dict()["records"][0]
