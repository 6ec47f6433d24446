"""Process migration between Machines of one process (no Ray): `migrate_local` and friends.

Every migrated program must end with exactly its native stdout, stderr and status, and every
machine must give back every frame and resource once its processes are gone.

A test that needs its process still there when it asks for a move uses `standby`, which runs
until the test tells it to finish: a slow host changes how long such a test takes, never what
it sees. Tests of how real programs fare when moved mid-run (sieve, recursion_fp, ...) cannot
hold them back; their first move is asked right after exec, and a run that ended before it
could be moved (on a loaded host) is run again, a few times at most.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.machines import (
    SlowTransport,
    assert_clean,
    bounce,
    finish,
    finish_standby,
    frames_free,
    local_mover,
    managers,
    start,
    start_standby,
    wait_state,
    wait_until,
)
from support.programs import native, native_standby, workload

from tender_ray.config import FaultSpec
from tender_ray.engines import resolve as resolve_engine
from tender_ray.errors import (
    CordonedError,
    MachineStoppedError,
    MigrationError,
    OutOfMemoryError,
    ProcessStateError,
    UnknownProcessError,
)
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import ProcessInfo
from tender_ray.migration.faults import FaultInjected
from tender_ray.migration.options import MigrationOptions, Resources, Transfer
from tender_ray.migration.protocol import migrate_local
from tender_ray.migration.record import EXTRA_PHASES, PHASES, MigrationRecord
from tender_ray.migration.transports import PlateTransport
from tender_ray.resources.real_memory import PAGE_SIZE

MakeMachine = Callable[..., Machine]


@functools.cache
def _native_engine_problem() -> str:
    name, notice = resolve_engine("native")
    return "" if name == "native" else notice or "native engine unavailable"


@pytest.fixture(params=["emulated", "native"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both engines (the default `auto` is native where it works)."""
    if request.param == "native" and _native_engine_problem():
        pytest.skip(_native_engine_problem())
    return str(request.param)


@pytest.fixture
def new_machine(make_machine: MakeMachine, engine: str) -> MakeMachine:
    """make_machine on the test's engine, 64 MiB and 1 ms quanta unless told otherwise."""

    def make(name: str, **config: object) -> Machine:
        config.setdefault("memory_mib", 64)
        config.setdefault("quantum_us", 1000)
        m = make_machine(name=name, engine=engine, **config)
        assert m.engine == engine
        return m

    return make


@pytest.fixture
def based_machine(make_machine: MakeMachine, engine: str) -> Callable[[str, int], Machine]:
    """Machines numbering their processes from a given pid base (as cluster actors do)."""

    def make(name: str, pid_base: int, memory_mib: int = 64) -> Machine:
        return make_machine(name=name, memory_mib=memory_mib, quantum_us=1000, engine=engine,
                            pid_base=pid_base)

    return make


@pytest.fixture
def trio(new_machine: MakeMachine) -> list[Machine]:
    """Three machines m0, m1, m2 (stopped after the test)."""
    return [new_machine(f"m{i}") for i in range(3)]


# Sizes that keep a workload running long enough to be moved several times: the native engine
# runs them about as fast as the host does, the emulated CPU 4-20 times slower.
SIZES = {
    "rmw_counter": {"emulated": "3000000", "native": "30000000"},
}


def sized(name: str, engine: str) -> tuple[str, str]:
    """(name, size argument) for a workload on `engine`."""
    return name, SIZES[name][engine]


def pause_for(engine: str) -> float:
    """Run time between moves in the bounce tests: the native engine runs a workload in a few
    milliseconds, so it is moved again at once (it still runs between the moves)."""
    return 0.003 if engine == "emulated" else 0.0


@pytest.fixture
def pair(trio: list[Machine]) -> tuple[Machine, Machine]:
    return trio[0], trio[1]


def plate_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def migrate_in_background(source: Machine, pid: int, destination: Machine,
                          transport: SlowTransport) -> tuple[threading.Thread, dict[str, object]]:
    """Start `migrate_local(source, pid, destination, transport=transport)` in a thread: the
    thread (the caller joins it) and a dict whose "r" becomes the record or the exception."""
    result: dict[str, object] = {}

    def move() -> None:
        try:
            result["r"] = migrate_local(source, pid, destination, transport=transport)
        except Exception as exc:
            result["r"] = exc

    thread = threading.Thread(target=move)
    thread.start()
    return thread, result


ATTEMPTS = 5  # runs of a real program that ended before its first move, at most


def run_moved(machines: list[Machine], work: tuple[str, ...], *,
              move: Callable[[Machine, int, Machine], MigrationRecord] | None = None,
              pause: float = 0.0, max_moves: int = 10_000
              ) -> tuple[int, list[MigrationRecord], ProcessInfo]:
    """Run the workload `work` (name, arguments) on machines[0], moved round-robin (`bounce`)
    from right after exec until it ends: (index of the machine it ended on, the records, its
    final info). Every run's status and output must be native's. A run that ended before its
    first move could freeze it (the host was busy) proves nothing about migration: it is run
    again, ATTEMPTS times at most."""
    expected = native(*work)
    for _ in range(ATTEMPTS):
        pid = start(machines[0], *work)
        where, records = bounce(machines, pid, move=move or local_mover(), pause=pause,
                                max_moves=max_moves)
        status, out, err, info = finish(machines[where], pid)
        assert (status, out, err) == expected
        if records:
            return where, records, info
    pytest.fail(f"{work[0]} ended before its first move in each of {ATTEMPTS} runs")


def migrate_at_once(moves: dict[str, tuple[Machine, int, Machine]]) -> dict[str, object]:
    """Run the migrations (key -> source, pid, destination) in threads that a barrier releases
    together, each over a `SlowTransport(0.2)`, and wait for them (60 s each): key -> its
    record, or the exception it raised."""
    barrier = threading.Barrier(len(moves))
    results: dict[str, object] = {}

    def move(key: str, source: Machine, pid: int, destination: Machine) -> None:
        barrier.wait()
        try:
            results[key] = migrate_local(source, pid, destination, transport=SlowTransport(0.2))
        except Exception as exc:
            results[key] = exc

    threads = [threading.Thread(target=move, args=(key, *m)) for key, m in moves.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# --- a running process moved many times ---------------------------------------------------------

# (workload, args): real programs moved as often as they can be while they run. How many moves
# land before one ends depends on the host's speed: each run is only required to have been moved.
MANY = [
    ("sieve", ("3000000",)),
    ("recursion_fp", ("1500",)),
    ("hashwalk", ("4",)),
    ("bigmmap", ("8",)),
    ("deepstack", ("60000",)),
    ("mallocstress", ("20000",)),
    ("floats", ()),
]


@pytest.mark.parametrize(("name", "args"), MANY, ids=[m[0] for m in MANY])
def test_running_process_migrated_many_times(trio: list[Machine], engine: str, name: str,
                                             args: tuple[str, ...]) -> None:
    where, records, info = run_moved(trio, (name, *args), pause=pause_for(engine),
                                     max_moves=30)
    # The chain of moves is unbroken and every record came along with the process.
    for a, b in itertools.pairwise(records):
        assert a.destination == b.source
    assert all(r.result == "ok" and r.pid == info.pid for r in records)
    assert [(m.source, m.destination) for m in info.migrations] == [
        (r.source, r.destination) for r in records]
    assert info.machine == trio[where].name
    for m in trio:
        assert_clean(m)


# --- strategies -------------------------------------------------------------------------------

@pytest.mark.parametrize("resources", ["needed", "all"])
@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no_reuse"])
@pytest.mark.parametrize("transfer", ["dsm", "plate"])
def test_strategy_combinations(trio: list[Machine], engine: str, tmp_path: Path,
                               transfer: str, reuse: bool, resources: str) -> None:
    options = MigrationOptions(transfer=Transfer(transfer), reuse=reuse,
                               resources=Resources(resources))
    shared = tmp_path / "shared-plate"
    transport = PlateTransport(shared) if transfer == "plate" else None
    args = ("2", "spin")  # computing the whole time it is moved; runs until told to finish
    pid, taken = start_standby(trio[0], *args)
    where, records = bounce(trio, pid, move=local_mover(options, transport),
                            pause=pause_for(engine), max_moves=4)
    status, out, err, _ = finish_standby(trio[where], pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert [(r.source, r.destination) for r in records] == [
        ("m0", "m1"), ("m1", "m2"), ("m2", "m0"), ("m0", "m1")]
    size = len(workload("standby").read_bytes())
    for r in records:
        assert (r.transfer, r.reuse, r.resources) == (transfer, reuse, resources)
        assert r.pages > 0
        extra = size if resources == "all" else 0
        assert r.bytes == r.pages * PAGE_SIZE + extra
    if transport is not None:
        assert plate_files(shared) == [], "page block files left on the shared plate"
    for m in trio:
        assert_clean(m)


def test_move_all_over_the_plate_leaves_no_files(pair: tuple[Machine, Machine],
                                                 tmp_path: Path) -> None:
    """The program image sent with resources=all is discarded like the page blocks."""
    a, b = pair
    shared = tmp_path / "shared-plate"
    transport = PlateTransport(shared)
    options = MigrationOptions(transfer=Transfer.PLATE, resources=Resources.ALL)
    pid, taken = start_standby(a, "1")
    migrate_local(a, pid, b, options, transport)
    status, out, err, _ = finish_standby(b, pid, taken)
    assert (status, out, err) == native_standby("1")
    assert plate_files(shared) == [], "files left on the shared plate"


def test_reuse_takes_and_holds_resources(pair: tuple[Machine, Machine]) -> None:
    """reuse=on: the destination takes a pre-created kernel process, the source holds what it
    deleted; reuse=off: both create and destroy."""
    a, b = pair
    pid, taken = start_standby(a, "1")
    before_a, before_b = managers(a), managers(b)
    migrate_local(a, pid, b, MigrationOptions(reuse=True))
    after_a, after_b = managers(a), managers(b)
    assert after_b["process"].reused == before_b["process"].reused + 1
    assert after_b["process"].live == 1
    assert after_a["process"].live == 0
    for resource in ("process", "virtual_space", "virtual_region", "virtual_user_space"):
        assert after_a[resource].held > before_a[resource].held, resource
        assert after_a[resource].deleted == before_a[resource].deleted, resource

    migrate_local(b, pid, a, MigrationOptions(reuse=False))
    again_a, again_b = managers(a), managers(b)
    assert again_a["process"].reused == after_a["process"].reused  # a new one was created
    assert again_a["process"].created == after_a["process"].created + 1
    for resource in ("process", "virtual_space", "virtual_region", "virtual_user_space"):
        assert again_b[resource].held == after_b[resource].held, resource
        assert again_b[resource].deleted > after_b[resource].deleted, resource
    status, out, err, _ = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby("1")
    assert_clean(a)
    assert_clean(b)
    assert managers(a)["process"].held >= 1  # the reaped process is held for reuse


def test_all_resources_needs_the_program_on_the_source_plate(trio: list[Machine]) -> None:
    """A process that arrived with resources=needed has no program image on its new plate: a
    further move with resources=all is refused, and the process keeps running there."""
    a, b, c = trio
    pid, taken = start_standby(a, "2")
    migrate_local(a, pid, b, MigrationOptions(resources=Resources.NEEDED))
    with pytest.raises(MigrationError, match="without its program image"):
        migrate_local(b, pid, c, MigrationOptions(resources=Resources.ALL))
    assert b.info(pid).state in ("runnable", "running", "sleeping")
    assert_clean(c)
    # Nothing is stuck: it still moves with resources=needed, and back home (a has the image)
    # it moves with resources=all again.
    migrate_local(b, pid, a, MigrationOptions(resources=Resources.NEEDED))
    migrate_local(a, pid, c, MigrationOptions(resources=Resources.ALL))
    status, out, err, _ = finish_standby(c, pid, taken)
    assert (status, out, err) == native_standby("2")
    for m in trio:
        assert_clean(m)


def test_refused_move_all_leaves_no_page_blocks_on_the_plate(trio: list[Machine],
                                                             tmp_path: Path) -> None:
    """A refused resources=all move leaves no page block files behind on the plate."""
    a, b, c = trio
    shared = tmp_path / "shared-plate"
    transport = PlateTransport(shared)
    pid, taken = start_standby(a, "2")
    migrate_local(a, pid, b, MigrationOptions(transfer=Transfer.PLATE), transport)
    assert plate_files(shared) == []
    with pytest.raises(MigrationError):
        migrate_local(b, pid, c, MigrationOptions(transfer=Transfer.PLATE,
                                                  resources=Resources.ALL), transport)
    try:
        assert plate_files(shared) == [], "page blocks of a refused migration left behind"
    finally:
        assert finish_standby(b, pid, taken)[:3] == native_standby("2")


# --- sleeping processes -----------------------------------------------------------------------

def test_sleeping_process_stays_asleep(trio: list[Machine]) -> None:
    """standby napping 1 s at a time: caught asleep, moved, and asleep on arrival, six times;
    output native. (Each nap outlasts a move many times over, even on a loaded host; one
    that ended during a move is waited out before the next.)"""
    args = ("1", "sleep", "1000")
    pid, taken = start_standby(trio[0], *args)
    where, arrived = 0, []
    for _ in range(6):
        wait_state(trio[where], pid, "sleeping", timeout=30.0)
        target = (where + 1) % 3
        migrate_local(trio[where], pid, trio[target])
        where = target
        arrived.append(trio[where].info(pid).state)
    status, out, err, _ = finish_standby(trio[where], pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert "sleeping" in arrived, f"never asleep right after arrival: {arrived}"
    for m in trio:
        assert_clean(m)


def test_long_sleep_survives_migration(pair: tuple[Machine, Machine]) -> None:
    """standby napping 3 s at a time: asleep on arrival, not woken early, runs on after."""
    a, b = pair
    args = ("1", "sleep", "3000")
    pid, taken = start_standby(a, *args)
    asleep = wait_state(a, pid, ["sleeping"])  # in its first nap, begun just before t
    t = time.monotonic()
    migrate_local(a, pid, b)
    assert b.info(pid).state == "sleeping"
    # Not woken early: standby's next nap call comes once the first nap is over, about 3 s
    # after it began; a sleeper the migration woke makes it within a few milliseconds. Its
    # own system call counts say when. (A lower bound: a slow host only makes it later.)
    slept = asleep.syscalls.get("nanosleep", 0)
    wait_until(lambda: b.info(pid).syscalls.get("nanosleep", 0) > slept, 30.0,
               "standby's second nap", machine=b, interval=0.001)
    woke = time.monotonic() - t
    assert woke >= 1.5, f"woken {woke:.3f} s after the migration, into a 3 s nap"
    status, out, err, info = finish_standby(b, pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert info.run_seconds >= woke  # the frozen time is not counted off
    assert_clean(a)
    assert_clean(b)


# --- bad requests -----------------------------------------------------------------------------

def test_unknown_pid(pair: tuple[Machine, Machine]) -> None:
    a, b = pair
    with pytest.raises(UnknownProcessError):
        migrate_local(a, 987654, b)
    assert_clean(a)
    assert_clean(b)


def test_finished_process_cannot_migrate(pair: tuple[Machine, Machine]) -> None:
    a, b = pair
    pid = start(a, "hello")
    a.wait(pid, timeout=30)
    with pytest.raises(ProcessStateError):
        migrate_local(a, pid, b)
    status, out, err, _ = finish(a, pid)
    assert (status, out, err) == native("hello")
    assert_clean(a)
    assert_clean(b)


def test_same_machine_is_refused(pair: tuple[Machine, Machine]) -> None:
    a, _ = pair
    pid, taken = start_standby(a, "1")
    with pytest.raises(MigrationError):
        migrate_local(a, pid, a)
    assert a.info(pid).state != "frozen"
    status, out, err, info = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby("1")
    assert info.migrations == ()
    assert_clean(a)


def test_destination_without_enough_frames(new_machine: MakeMachine) -> None:
    a = new_machine("big")
    small = new_machine("small", memory_mib=2)
    pid, taken = start_standby(a, "4")  # ready: its 4 MiB are touched
    assert a.info(pid).resident_pages > 1024
    with pytest.raises(OutOfMemoryError):
        migrate_local(a, pid, small)
    assert a.info(pid).state != "frozen"
    assert_clean(small)
    status, out, err, _ = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby("4")
    assert_clean(a)


def test_concurrent_migrations_one_wins(trio: list[Machine]) -> None:
    """Two threads migrate one process at once (to different machines): exactly one moves it,
    the other gets ProcessStateError and touches nothing."""
    a, b, c = trio
    pid, taken = start_standby(a, "2")
    results = migrate_at_once({d.name: (a, pid, d) for d in (b, c)})
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert len(results) == 2 and len(errors) == 1, results
    assert isinstance(errors[0], ProcessStateError), errors[0]
    winner = b if not isinstance(results[b.name], Exception) else c
    loser = c if winner is b else b
    status, out, err, info = finish_standby(winner, pid, taken)
    assert (status, out, err) == native_standby("2")
    assert len(info.migrations) == 1
    for m in (a, loser, winner):
        assert_clean(m)


# --- rollback ---------------------------------------------------------------------------------

FAULT_PHASES = ["create", "transform_space", "transform_program", "transform_start", "commit"]


@pytest.mark.parametrize("phase", FAULT_PHASES)
def test_fault_at_phase_rolls_back(new_machine: MakeMachine, phase: str) -> None:
    trio = [new_machine("m0"), new_machine("m1", fault=FaultSpec(phase=phase)),
            new_machine("m2")]
    a, b, c = trio
    pid, taken = start_standby(a, "2")
    with pytest.raises(FaultInjected, match=phase):
        migrate_local(a, pid, b)
    assert b.faults.phase == ""  # the fault fired
    assert a.info(pid).state != "frozen"
    assert_clean(b)
    assert b.migration_totals["in_aborted"] == 1
    assert a.migration_totals["out_failed"] == 1
    # The process was not left marked as migrating: it moves on, then ends natively.
    migrate_local(a, pid, c)
    status, out, err, info = finish_standby(c, pid, taken)
    assert (status, out, err) == native_standby("2")
    assert [(m.destination, m.result) for m in info.migrations] == [("m2", "ok")]
    for m in trio:
        assert_clean(m)


@pytest.mark.parametrize("phase", FAULT_PHASES)
def test_fault_then_finish_on_source(new_machine: MakeMachine, phase: str) -> None:
    a, b = new_machine("m0"), new_machine("m1", fault=FaultSpec(phase=phase))
    args = ("4", "spin")  # computing when frozen, and after the failed move
    pid, taken = start_standby(a, *args)
    with pytest.raises(FaultInjected):
        migrate_local(a, pid, b, MigrationOptions(reuse=False, resources=Resources.ALL))
    assert_clean(b)
    status, out, err, info = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert info.machine == "m0" and info.migrations == ()
    assert_clean(a)


# --- same-machine migration -------------------------------------------------------------------

def test_same_machine_space_migration(new_machine: MakeMachine, engine: str) -> None:
    """A computing process re-pasted into a new space ten times: no page copied, output
    native, every move in its record."""
    m = new_machine("solo")
    args = ("2", "spin")
    pid, taken = start_standby(m, *args)
    for _ in range(10):
        record = m.migrate_space(pid)
        assert record.pages == 0 and record.bytes == 0
        assert record.source == record.destination == "solo"
        time.sleep(pause_for(engine))  # lets it compute between moves; no count depends on it
    status, out, err, info = finish_standby(m, pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert len(info.migrations) == 10
    assert_clean(m)


def test_space_migration_copies_no_page(new_machine: MakeMachine) -> None:
    """Asleep (so it touches nothing), the process is re-pasted into a new space: the frames
    in use do not change at all."""
    m = new_machine("solo")
    args = ("2", "sleep", "3000")
    pid, taken = start_standby(m, *args)
    wait_state(m, pid, ["sleeping"])
    used = m.statistics().memory.frames_used
    resident = m.info(pid).resident_pages
    record = m.migrate_space(pid)
    assert m.statistics().memory.frames_used == used
    assert m.info(pid).resident_pages == resident
    assert m.info(pid).state == "sleeping"
    assert record.pages == 0 and record.transfer == "space"
    status, out, err, _ = finish_standby(m, pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert_clean(m)


# --- the record -------------------------------------------------------------------------------

def test_record_phases_and_bytes(pair: tuple[Machine, Machine]) -> None:
    a, b = pair
    pid, taken = start_standby(a, "2")  # ready: its 2 MiB are touched
    resident = a.info(pid).resident_pages
    record = migrate_local(a, pid, b)
    assert set(PHASES) <= set(record.phases), record.phases
    assert set(EXTRA_PHASES) - {"precopy"} <= set(record.phases), record.phases  # stop mode
    assert all(v >= 0 for v in record.phases.values())
    assert record.pages >= resident > 512
    assert record.bytes == record.pages * PAGE_SIZE
    assert record.seconds >= sum(record.phases[p] for p in PHASES)
    assert (record.source, record.destination, record.pid) == ("m0", "m1", pid)
    d = record.as_dict()
    for key in ("from", "to", "seconds", "bytes", "pages", "phases"):
        assert key in d
    assert a.migration_records[-1].destination == "m1"
    assert a.migration_totals["out_ok"] == 1 and b.migration_totals["in_ok"] == 1
    assert a.migration_bytes == record.bytes
    status, out, err, info = finish_standby(b, pid, taken)
    assert (status, out, err) == native_standby("2")
    assert info.migrations[0].pages == record.pages
    assert frames_free(a) and frames_free(b)


# --- more ways a migration can be refused or interfered with ----------------------------------

def test_read_modify_write_exact_across_migrations(trio: list[Machine], engine: str) -> None:
    """Every migration stops the process at an instruction boundary: a memory-operand
    increment never runs twice, however often it is moved."""
    work = sized("rmw_counter", engine)
    _, records, _ = run_moved(trio, work, pause=pause_for(engine) * 0.7, max_moves=40)
    assert native(*work)[1].endswith(b"ok\n")
    # The same with a process that is certainly still there for each of 12 moves: standby's
    # memory-operand increments are counted in a register too ("counter exact").
    args = ("1", "spin")
    pid, taken = start_standby(trio[0], *args)
    where, records = bounce(trio, pid, move=local_mover(), pause=pause_for(engine),
                            max_moves=12)
    status, out, err, _ = finish_standby(trio[where], pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert b"counter exact" in out and len(records) == 12


def test_stopped_destination(pair: tuple[Machine, Machine]) -> None:
    a, b = pair
    b.stop()
    pid, taken = start_standby(a, "1")
    with pytest.raises(MachineStoppedError):
        migrate_local(a, pid, b)
    assert a.info(pid).state != "frozen"
    status, out, err, _ = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby("1")
    assert_clean(a)


def test_pid_taken_on_destination(pair: tuple[Machine, Machine]) -> None:
    """Machines made without a pid base share pids: a destination that has a process with the
    same pid refuses, and both processes go on untouched."""
    a, b = pair
    pid_a, taken_a = start_standby(a, "1")
    pid_b, taken_b = start_standby(b, "2", "spin")
    assert pid_a == pid_b
    with pytest.raises(MigrationError, match="already has a process"):
        migrate_local(a, pid_a, b)
    assert finish_standby(a, pid_a, taken_a)[:3] == native_standby("1")
    assert finish_standby(b, pid_b, taken_b)[:3] == native_standby("2", "spin")
    assert_clean(a)
    assert_clean(b)


def test_kill_during_migration(pair: tuple[Machine, Machine]) -> None:
    """A kill that arrives while a migration owns the frozen process must not tear it down
    under the migration (it once freed the frames being exported, let the destination run the
    "killed" process on, and put the kernel space into the space pool)."""
    a, b = pair
    pid, taken = start_standby(a, "2")
    transport = SlowTransport(0.1)
    thread, _ = migrate_in_background(a, pid, b, transport)
    try:
        assert transport.putting.wait(30)  # frozen, its pages being exported
        try:
            a.kill(pid)  # waits for the migration to end, then kills it if it is still here
            killed = True
        except UnknownProcessError:  # it moved away meanwhile: kill it where it runs now
            killed = False
    finally:
        thread.join(60)
    # The space manager's books on a are right: one space handed out per process of a that
    # still owns one (not a zombie); the kill put no space, the kernel's least of all, back
    # into the pool under the migration. Counts and processes are read in one snapshot.
    stats, processes = a.load()
    spaces = {s.resource: s for s in stats.managers}["virtual_space"]
    owners = [p.pid for p in processes if p.state != "zombie"]
    assert spaces.live == len(owners), (spaces, processes)
    assert all(p.pid != pid or p.state == "zombie" for p in a.list_processes())
    holder = b if any(p.pid == pid for p in b.list_processes()) else a
    if killed:
        status = finish(holder, pid)[0]
        assert status == 128 + 9, f"killed, but it ran on on {holder.name}"
    else:
        assert finish_standby(holder, pid, taken)[:3] == native_standby("2")
    assert_clean(a)
    assert_clean(b)


# --- between engines ----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "args"), [("floats", ()), ("recursion_fp", ("1500",)),
                                            ("hashwalk", ("4",)), ("sieve", ("3000000",))])
def test_migration_between_engines(make_machine: MakeMachine, name: str,
                                   args: tuple[str, ...]) -> None:
    """A process image moves between the emulated CPU and the native engine and back: the
    registers (x87, SSE, fs base) travel in one canonical form."""
    if _native_engine_problem():
        pytest.skip(_native_engine_problem())
    machines = [make_machine(name=f"{e}{i}", engine=e, memory_mib=64, quantum_us=1000)
                for i, e in enumerate(("emulated", "native", "emulated", "native"))]
    run_moved(machines, (name, *args), max_moves=24)
    for m in machines:
        assert_clean(m)


# --- arrivals that compete ----------------------------------------------------------------------

def test_two_arrivals_that_do_not_fit_together(
        based_machine: Callable[..., Machine]) -> None:
    """Each process fits on the 8 MiB destination alone, not both: both pass the create check,
    the second transform runs out of frames, rolls back, and its process goes on at home."""
    a, c = based_machine("a", 1000), based_machine("c", 2000)
    small = based_machine("small", 3000, memory_mib=8)
    pids, taken = {}, {}
    for m in (a, c):  # each ready: its 5 MiB touched, and napping until told to finish
        pids[m.name], taken[m.name] = start_standby(m, "5")
        assert m.info(pids[m.name]).resident_pages > 1280
    results = migrate_at_once({m.name: (m, pids[m.name], small) for m in (a, c)})
    failed = {n: r for n, r in results.items() if isinstance(r, Exception)}
    assert len(results) == 2 and len(failed) == 1, results
    assert isinstance(next(iter(failed.values())), OutOfMemoryError)
    moved = next(n for n in results if n not in failed)
    home = next(m for m in (a, c) if m.name in failed)
    assert finish_standby(small, pids[moved], taken[moved])[:3] == native_standby("5")
    assert finish_standby(home, pids[home.name], taken[home.name])[:3] == native_standby("5")
    for m in (a, c, small):
        assert_clean(m)


def test_cordoned_destination(pair: tuple[Machine, Machine]) -> None:
    a, b = pair
    b.cordon()
    pid, taken = start_standby(a, "1")
    with pytest.raises(CordonedError):
        migrate_local(a, pid, b)
    assert a.info(pid).state != "frozen"
    b.uncordon()
    migrate_local(a, pid, b)
    assert finish_standby(b, pid, taken)[:3] == native_standby("1")
    assert_clean(a)
    assert_clean(b)


def test_exec_does_not_reuse_the_pid_of_an_arrived_process(
        pair: tuple[Machine, Machine]) -> None:
    a, b = pair  # both number their processes from 1000
    arrived, taken = start_standby(a, "1")
    migrate_local(a, arrived, b)
    local = start(b, "hello")
    try:
        assert local != arrived
        assert {p.pid for p in b.list_processes()} == {arrived, local}
        assert finish_standby(b, arrived, taken)[:3] == native_standby("1")
        assert finish(b, local)[:3] == native("hello")
    finally:
        b.stop()  # what is left running invisibly ends with the machine


def test_refused_arrival_does_not_abort_another_migration(
        based_machine: Callable[..., Machine]) -> None:
    a, c = based_machine("a", 1000), based_machine("c", 1000)  # same pids, as local tools do
    b = based_machine("b", 5000)
    (first, taken), (second, taken_c) = start_standby(a, "2"), start_standby(c, "2")
    assert first == second
    transport = SlowTransport(0.2)
    thread, result = migrate_in_background(a, first, b, transport)
    try:
        assert transport.putting.wait(30)  # a's migration has its kernel process on b
        with pytest.raises(MigrationError, match="already has a process"):
            migrate_local(c, second, b)
    finally:
        thread.join(60)
    try:
        assert not isinstance(result["r"], Exception), f"a's migration failed: {result['r']!r}"
        assert finish_standby(b, first, taken)[:3] == native_standby("2")
        assert finish_standby(c, second, taken_c)[:3] == native_standby("2")
    finally:
        for m in (a, c, b):
            for info in m.list_processes():  # what an earlier failure left
                if info.state == "zombie":
                    finish(m, info.pid)
                else:
                    finish_standby(m, info.pid)
    for m in (a, c, b):
        assert_clean(m)
