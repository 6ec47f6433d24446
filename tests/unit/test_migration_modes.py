"""Migrations by mode as the views show them: the per-mode sums (`metrics.modes`), one move in
words, and report.json's `by_mode` beside every record's own fields."""

from __future__ import annotations

import dataclasses
import json

import pytest
from support.snapshots import record

from tender_ray.cli.scenario.report import MigrationSummary
from tender_ray.metrics.modes import describe_move, live_bytes, summarise_modes
from tender_ray.migration.record import MigrationRecord

MIB = 1 << 20


def precopy(pid: int, started: float, *, freeze: float, seconds: float,
            rounds: tuple[int, ...], frozen: int) -> MigrationRecord:
    """A pre-copy move of `pid`: live rounds sending `rounds` bytes, then `frozen` bytes in a
    freeze of `freeze` seconds, `seconds` in all."""
    return dataclasses.replace(
        record(pid, "a", "b", started, seconds=seconds), mode="precopy", rounds=len(rounds),
        round_bytes=rounds, freeze_bytes=frozen, freeze_seconds=freeze,
        bytes=sum(rounds) + frozen, pages=(sum(rounds) + frozen) // 4096)


def stop(pid: int, started: float, *, freeze: float, seconds: float, nbytes: int,
         result: str = "ok") -> MigrationRecord:
    return dataclasses.replace(record(pid, "a", "b", started, seconds=seconds, result=result),
                               freeze_seconds=freeze, freeze_bytes=nbytes, bytes=nbytes)


def test_modes_are_summed_apart() -> None:
    moves = [stop(1, 1.0, freeze=0.4, seconds=0.5, nbytes=8 * MIB),
             stop(2, 2.0, freeze=0.2, seconds=0.3, nbytes=4 * MIB),
             stop(3, 3.0, freeze=0.9, seconds=1.0, nbytes=MIB, result="failed"),
             precopy(4, 4.0, freeze=0.01, seconds=0.8, rounds=(8 * MIB, MIB), frozen=MIB // 4)]
    modes = summarise_modes(moves)
    assert list(modes) == ["precopy", "stop"]
    s, p = modes["stop"], modes["precopy"]
    # The failed move is counted as failed; its freeze and bytes are no move's cost.
    assert (s.count, s.failed, s.rounds) == (2, 1, 0)
    assert s.seconds == pytest.approx(0.8) and s.freeze_seconds == pytest.approx(0.6)
    assert s.freeze_p50 == pytest.approx(0.3) and s.freeze_max == pytest.approx(0.4)
    assert s.freeze_share == pytest.approx(0.75)
    assert (s.bytes, s.live_bytes, s.freeze_bytes) == (12 * MIB, 0, 12 * MIB)
    assert (p.count, p.failed, p.rounds) == (1, 0, 2)
    assert (p.bytes, p.live_bytes, p.freeze_bytes) == (9 * MIB + MIB // 4, 9 * MIB, MIB // 4)
    assert p.freeze_share == pytest.approx(0.01 / 0.8)
    assert summarise_modes([]) == {}


def test_one_move_in_words() -> None:
    move = precopy(4, 4.0, freeze=0.0031, seconds=0.0402, rounds=(11 * MIB, MIB // 2),
                   frozen=MIB // 2)
    assert live_bytes(move) == 11 * MIB + MIB // 2
    assert describe_move(move) == ("precopy · froze 3.1 of 40.2 ms · 2 rounds · "
                                   "12.0 MiB (11.5 live, 0.5 frozen)")
    one = dataclasses.replace(move, rounds=1, round_bytes=(11 * MIB,), bytes=11 * MIB + MIB // 2)
    assert "· 1 round ·" in describe_move(one)
    plain = stop(1, 1.0, freeze=0.25, seconds=0.5, nbytes=2 * MIB)
    assert describe_move(plain) == "stop · froze 250.0 of 500.0 ms · 2.0 MiB"
    shared = dataclasses.replace(plain, text_shared=True)
    assert describe_move(shared).endswith("· text shared")


def test_report_json_carries_every_mode_and_each_records_fields() -> None:
    moves = (stop(1, 1.0, freeze=0.4, seconds=0.5, nbytes=8 * MIB),
             precopy(2, 2.0, freeze=0.01, seconds=0.8, rounds=(8 * MIB, MIB), frozen=4096))
    summary = MigrationSummary(len(moves), sum(m.bytes for m in moves), moves, ())
    data = json.loads(json.dumps(summary.as_dict({2: "sieve#0"})))
    assert set(data["by_mode"]) == {"stop", "precopy"}
    pre = data["by_mode"]["precopy"]
    assert pre["count"] == 1 and pre["rounds"] == 2
    assert pre["freeze_seconds"] == pytest.approx(0.01) and pre["seconds"] == pytest.approx(0.8)
    assert pre["live_bytes"] == 9 * MIB and pre["freeze_bytes"] == 4096
    assert data["by_mode"]["stop"]["freeze_share"] == pytest.approx(0.8)
    rec = data["records"][1]
    assert rec["process"] == "sieve#0" and rec["mode"] == "precopy"
    assert rec["rounds"] == 2 and rec["round_bytes"] == [8 * MIB, MIB]
    assert rec["freeze_bytes"] == 4096 and rec["freeze_seconds"] == pytest.approx(0.01)
    assert rec["seconds"] == pytest.approx(0.8) and rec["bytes"] == 9 * MIB + 4096
