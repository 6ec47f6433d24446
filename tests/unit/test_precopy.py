"""Pre-copy migration between Machines of one process (no Ray), and the choice of mode.

Programs moved in mode precopy every 50 ms or so across three machines must print exactly what
they print natively, on each engine and across engines, including one that rewrites a large
working set while it moves. The record says how it went: live rounds, bytes per round, the
bytes sent while frozen. Nothing here asserts a time or a count that depends on speed.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from support.machines import (
    assert_clean,
    bounce,
    finish,
    finish_standby,
    local_mover,
    managers,
    start,
    start_standby,
    wait_ready,
    wait_until,
)
from support.programs import WRITESET_READY, native, native_standby, native_writeset

from tender_ray.engines import resolve as resolve_engine
from tender_ray.errors import TenderError
from tender_ray.kernel.machine import Machine
from tender_ray.migration import precopy
from tender_ray.migration.options import MigrationMode, MigrationOptions, migration_mode
from tender_ray.migration.protocol import LocalPeer, migrate_local, run_migration
from tender_ray.migration.record import MigrationRecord, Outcome
from tender_ray.migration.transports import LocalTransport

MakeMachine = Callable[..., Machine]
PRECOPY = MigrationOptions(mode=MigrationMode.PRECOPY)
PAUSE = 0.05  # seconds a process runs between two moves


@functools.cache
def _native_problem() -> str:
    name, notice = resolve_engine("native")
    return "" if name == "native" else notice or "native engine unavailable"


# Engines of the three machines: each engine alone, and the two mixed (a process moves from
# one engine to the other and back).
LAYOUTS = {"emulated": ("emulated",) * 3, "native": ("native",) * 3,
           "mixed": ("emulated", "native", "emulated")}


@pytest.fixture(params=list(LAYOUTS))
def trio(request: pytest.FixtureRequest, make_machine: MakeMachine) -> list[Machine]:
    engines = LAYOUTS[str(request.param)]
    if "native" in engines and _native_problem():
        pytest.skip(_native_problem())
    return [make_machine(name=f"m{i}", engine=e, memory_mib=96, quantum_us=1000)
            for i, e in enumerate(engines)]


def check_precopied(records: list[MigrationRecord]) -> None:
    """Every move went by pre-copy, had at least one live round (the first holds every page),
    and its bytes are the rounds' and the freeze's."""
    assert records
    for r in records:
        assert r.ok and r.mode == "precopy", r
        assert r.rounds >= 1 and len(r.round_bytes) == r.rounds
        assert r.bytes == sum(r.round_bytes) + r.freeze_bytes
        assert 0 < r.freeze_seconds <= r.seconds


def test_small_writing_set_moves_with_a_small_freeze(trio: list[Machine]) -> None:
    """standby computes over 16 MiB but writes only a few pages: each move's freeze sends
    far less than the whole space."""
    args = ("16", "spin")
    pid, taken = start_standby(trio[0], *args)
    where, records = bounce(trio, pid, move=local_mover(PRECOPY), pause=PAUSE, max_moves=6)
    status, out, err, info = finish_standby(trio[where], pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert len(records) == 6
    check_precopied(records)
    for r in records:
        assert r.freeze_bytes < r.round_bytes[0], r  # the first round: the whole space
        assert r.round_bytes[0] >= 16 << 20
    assert [m.mode for m in info.migrations] == ["precopy"] * 6
    for m in trio:
        assert_clean(m)


def test_large_writing_set_arrives_as_last_written(trio: list[Machine]) -> None:
    """writeset rewrites 8 of its 16 MiB over and over while it moves: every page arrives
    holding its last pass (it verifies the whole heap at the end)."""
    args = ("16", "8")
    pid = start(trio[0], "writeset", *args)
    taken = wait_ready(trio[0], pid, line=WRITESET_READY)
    where, records = bounce(trio, pid, move=local_mover(PRECOPY), pause=PAUSE, max_moves=6)
    trio[where].kill(pid, int(signal.SIGUSR1))
    status, out, err, _ = finish(trio[where], pid)
    assert (status, taken + out, err) == native_writeset(*args)
    assert len(records) == 6
    check_precopied(records)
    for m in trio:
        assert_clean(m)


@pytest.mark.parametrize("work", [("hashwalk", "4"), ("sieve", "3000000"),
                                  ("mallocstress", "20000")], ids=lambda w: w[0])
def test_running_programs_moved_by_precopy(trio: list[Machine], work: tuple[str, ...]
                                           ) -> None:
    """Programs that run to their end while they are moved (hashwalk writes across its whole
    heap, mallocstress maps and unmaps all the time) print what they print natively."""
    expected = native(*work)
    for _ in range(5):  # a run that ended before its first move proves nothing: again
        pid = start(trio[0], *work)
        where, records = bounce(trio, pid, move=local_mover(PRECOPY), pause=PAUSE / 5,
                                max_moves=20)
        status, out, err, _ = finish(trio[where], pid)
        assert (status, out, err) == expected
        if records:
            check_precopied(records)
            break
    else:
        pytest.fail(f"{work[0]} ended before its first move in each of 5 runs")
    for m in trio:
        assert_clean(m)


# --- failures -------------------------------------------------------------------------------

class FailingPeer(LocalPeer):
    """A destination whose first live round's answer is lost after it staged its pages."""

    rounds = 0

    def precopy(self, mid: str, vpns: npt.NDArray[np.int64], handles: tuple[object, ...],
                options: MigrationOptions) -> int:
        self.rounds += 1
        staged = super().precopy(mid, vpns, handles, options)
        assert staged == vpns.size > 0
        raise TenderError("the round's answer is lost")


def test_failed_precopy_leaves_the_process_running_at_its_source(
        make_machine: MakeMachine) -> None:
    a, b = (make_machine(name=n, engine="emulated", memory_mib=64, quantum_us=1000)
            for n in ("a", "b"))
    args = ("8", "8")
    pid = start(a, "writeset", *args)
    taken = wait_ready(a, pid, line=WRITESET_READY)
    transport = LocalTransport()
    peer = FailingPeer(b, transport)
    with pytest.raises(TenderError, match="answer is lost"):
        run_migration(a, pid, peer, transport, PRECOPY)
    assert peer.rounds == 1
    assert a.info(pid).state not in ("frozen", "zombie")
    assert not a.is_tracked(pid)  # the tracking was the pre-copy's
    assert a.recent_migrations()[-1].result == "failed"
    assert_clean(b)  # what the first round staged is freed
    a.kill(pid, int(signal.SIGUSR1))
    status, out, err, _ = finish(a, pid)
    assert (status, taken + out, err) == native_writeset(*args)


def test_staged_pages_freed_when_the_source_goes_silent(make_machine: MakeMachine) -> None:
    """A source that dies during the live rounds: its lease expires at the destination,
    which frees every staged page."""
    a = make_machine(name="a", engine="emulated", memory_mib=64, quantum_us=1000)
    b = make_machine(name="b", engine="emulated", memory_mib=64, quantum_us=1000,
                     migration_lease_s=0.5)
    pid, taken = start_standby(a, "4", "sleep")
    transport = LocalTransport()
    mid = "a:1:silent"
    b.create_incoming(mid, "a", pid, 1024, True)
    a.precopy_begin(pid)
    _, vpns, handles = a.precopy_round(pid, transport, None)
    assert handles is not None
    assert b.precopy_pages(mid, vpns, handles, transport) == vpns.size >= 1024
    assert b.statistics().memory.frames_used >= vpns.size
    wait_until(lambda: b.outcome(mid) is Outcome.EXPIRED, what="the lease expired")
    wait_until(lambda: b.statistics().memory.frames_used == 0 and not managers(b)[
        "process"].live, what="staged frames and the kernel process freed")
    assert_clean(b)
    a.precopy_cancel(pid)
    status, out, err, _ = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby("4", "sleep")


# --- modes ----------------------------------------------------------------------------------

def test_postcopy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'postcopy' is not available yet"):
        migration_mode("postcopy")
    with pytest.raises(ValueError, match="unknown migration mode 'fast'"):
        migration_mode("fast")
    assert migration_mode("auto") is MigrationMode.AUTO


def test_auto_chooses_by_size_engine_and_dirty_rate() -> None:
    big = 64 << 20 >> 12
    choose = precopy.choose_mode
    auto = MigrationMode.AUTO
    assert choose(auto, precopy.PrecopyFacts(16, "emulated")) is MigrationMode.STOP
    assert choose(auto, precopy.PrecopyFacts(big, "emulated")) is MigrationMode.PRECOPY
    assert choose(auto, precopy.PrecopyFacts(big, "native")) is MigrationMode.STOP
    fast_writer = precopy.PrecopyFacts(big, "emulated", dirty_rate=9e8, copy_rate=1e9)
    assert choose(auto, fast_writer) is MigrationMode.STOP
    slow_writer = precopy.PrecopyFacts(big, "emulated", dirty_rate=1e6, copy_rate=1e9)
    assert choose(auto, slow_writer) is MigrationMode.PRECOPY
    assert choose(MigrationMode.PRECOPY, None) is MigrationMode.PRECOPY


def test_auto_moves_a_small_process_by_stop_and_a_large_one_by_precopy(
        make_machine: MakeMachine) -> None:
    a, b = (make_machine(name=n, engine="emulated", memory_mib=160, quantum_us=1000)
            for n in ("a", "b"))
    auto = MigrationOptions(mode=MigrationMode.AUTO)
    small, small_out = start_standby(a, "1", "sleep")
    large, large_out = start_standby(a, "48", "sleep")
    assert migrate_local(a, small, b, auto).mode == "stop"
    record = migrate_local(a, large, b, auto)
    assert record.mode == "precopy" and record.rounds >= 1
    assert record.copy_rate > 0
    assert record.freeze_bytes < 48 << 20
    for pid, out, args in ((small, small_out, ("1", "sleep")),
                           (large, large_out, ("48", "sleep"))):
        status, stdout, err, _ = finish_standby(b, pid, out)
        assert (status, stdout, err) == native_standby(*args)
    assert_clean(a)


def test_stop_mode_record(make_machine: MakeMachine) -> None:
    a, b = (make_machine(name=n, engine="emulated", quantum_us=1000) for n in ("a", "b"))
    pid, taken = start_standby(a, "2", "sleep")
    r = migrate_local(a, pid, b)
    assert (r.mode, r.rounds, r.round_bytes) == ("stop", 0, ())
    assert r.freeze_bytes == r.bytes >= 2 << 20
    assert 0 < r.freeze_seconds <= r.seconds
    assert r.as_dict()["mode"] == "stop"
    status, out, err, _ = finish_standby(b, pid, taken)
    assert (status, out, err) == native_standby("2", "sleep")


def test_command_line_modes(capsys: pytest.CaptureFixture[str]) -> None:
    from tender_ray.cli.main import _options, build_parser

    parser = build_parser()
    ns = parser.parse_args(["migrate", "--mode", "precopy", "7", "m1"])
    assert _options(ns).mode is MigrationMode.PRECOPY
    ns = parser.parse_args(["exec", "--migrate-mode", "auto", "/bin/true"])
    assert _options(ns).mode is MigrationMode.AUTO
    assert _options(parser.parse_args(["migrate", "7", "m1"])).mode is MigrationMode.STOP
    with pytest.raises(SystemExit):
        parser.parse_args(["migrate", "--mode", "postcopy", "7", "m1"])
    assert "'postcopy' is not available yet" in capsys.readouterr().err


def test_scenario_mode_is_validated() -> None:
    from pydantic import ValidationError

    from tender_ray.cli.scenario.model import MigrationSpec

    assert MigrationSpec(mode="precopy").options().mode is MigrationMode.PRECOPY  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="'postcopy' is not available yet"):
        MigrationSpec(mode="postcopy")  # type: ignore[arg-type]
