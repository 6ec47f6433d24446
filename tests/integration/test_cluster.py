"""Machines as Ray actors (an embedded local Ray): exec through handles, migration between
actors with each transfer, and a destination actor that dies in the middle of a migration.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.clusters import own_cluster
from support.machines import (
    actor_mover,
    assert_clean,
    bounce,
    finish,
    finish_standby,
    start,
    start_standby,
)
from support.programs import GUEST_TIMEOUT, STANDBY_READY, native, native_standby, workload

from tender_ray.abi.linux import Signal
from tender_ray.cli.execute import execute
from tender_ray.cluster import Cluster, MachineHandle
from tender_ray.config import FaultAction, FaultSpec, MachineConfig
from tender_ray.errors import (
    MachineError,
    MachineStoppedError,
    TenderError,
    UnknownMachineError,
)
from tender_ray.migration.options import MigrationOptions, Resources, Transfer
from tender_ray.migration.record import PHASES, MigrationRecord

NAMES = ("a", "b", "c")


def config(name: str, fault: FaultSpec | None = None) -> MachineConfig:
    return MachineConfig(name=name, memory_mib=64, quantum_us=1000, engine="emulated",
                         fault=fault)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster(config(name) for name in NAMES) as c:
        yield c


RECORD_KEYS = {"pid", "from", "to", "seconds", "bytes", "pages", "phases", "transfer", "reuse",
               "resources", "result"}


def check_record(migration: MigrationRecord, source: str, destination: str) -> None:
    record = migration.as_dict()  # the record as reports and `--stats` show it
    assert set(record) >= RECORD_KEYS, record
    assert (record["from"], record["to"], record["result"]) == (source, destination, "ok")
    assert record["seconds"] > 0 and record["pages"] > 0
    assert set(PHASES) <= set(record["phases"])
    if record["resources"] == "needed":
        assert record["bytes"] == record["pages"] * 4096


# --- exec ---------------------------------------------------------------------------------------

def test_exec_through_handles(cluster: Cluster) -> None:
    a = cluster.machine("a")
    assert set(cluster.machines) >= set(NAMES)
    for name, args in (("hello", ()), ("exitcode", ()), ("segv", ()), ("floats", ())):
        status, out, err, info = finish(a, start(a, name, *args))
        assert (status, out, err) == native(name, *args), name
        assert info.machine == "a"
    path = workload("args")
    pid = a.exec(path.read_bytes(), "args", [os.fspath(path), "x", "y z"], ["TENDER_TEST=42"])
    status, out, _, _ = finish(a, pid)
    assert status == 0 and b"y z" in out and b"42" in out
    assert_clean(a)


def test_unknown_machine(cluster: Cluster) -> None:
    with pytest.raises(UnknownMachineError):
        cluster.machine("nowhere")
    a = cluster.machine("a")
    pid, taken = start_standby(a, "1")
    with pytest.raises(UnknownMachineError):
        a.migrate(pid, "nowhere")
    assert a.info(pid).state != "frozen"
    status, out, err, _ = finish_standby(a, pid, taken)
    assert (status, out, err) == native_standby("1")
    assert_clean(a)


# --- migration between actors -----------------------------------------------------------------

STRATEGIES = {
    "dsm": MigrationOptions(transfer=Transfer.DSM),
    "plate": MigrationOptions(transfer=Transfer.PLATE),
    "dsm-no_reuse-all": MigrationOptions(transfer=Transfer.DSM, reuse=False,
                                         resources=Resources.ALL),
    "plate-all": MigrationOptions(transfer=Transfer.PLATE, resources=Resources.ALL),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_migration_across_actors(cluster: Cluster, strategy: str) -> None:
    handles = [cluster.machine(n) for n in NAMES]
    options = STRATEGIES[strategy]
    args = ("2", "spin")  # computing while it is moved, until told to finish
    pid, taken = start_standby(handles[0], *args)
    where, records = bounce(handles, pid, move=actor_mover(options), pause=0.005,
                            max_moves=6)
    status, out, err, info = finish_standby(handles[where], pid, taken)
    assert (status, out, err) == native_standby(*args)
    assert len(records) == 6
    for i, r in enumerate(records):
        check_record(r, NAMES[i % 3], NAMES[(i + 1) % 3])
        assert (r.transfer, r.reuse, r.resources) == (
            options.transfer.value, options.reuse, options.resources.value)
    assert info.machine == NAMES[where]
    assert [(m.source, m.destination) for m in info.migrations] == [
        (r.source, r.destination) for r in records]
    for h in handles:
        assert_clean(h)
    leftovers = [p for p in Path(cluster.shared_plate).rglob("*") if p.is_file()]
    assert leftovers == [], "files left on the shared plate"


def tell_to_finish_once_moved(cluster: Cluster, chunks: list[tuple[int, bytes]],
                              moves: int) -> None:
    """Wait until the standby process that `execute` follows has said it is ready (in
    `chunks`) and moved `moves` times, then tell it to finish wherever it is then."""
    deadline = time.monotonic() + GUEST_TIMEOUT
    while time.monotonic() < deadline:
        ready = STANDBY_READY in b"".join(d for fd, d in list(chunks) if fd == 1)
        for handle in cluster.machines.values():
            for info in handle.list_processes():
                if ready and info.name == "standby" and len(info.migrations) >= moves:
                    with contextlib.suppress(TenderError):  # it moved on meanwhile: again
                        handle.kill(info.pid, int(Signal.SIGUSR1))
                        return
        time.sleep(0.01)


def test_execute_with_migrations_reports_stats(cluster: Cluster) -> None:
    chunks: list[tuple[int, bytes]] = []
    args = ("2", "spin")
    teller = threading.Thread(target=tell_to_finish_once_moved, args=(cluster, chunks, 2),
                              daemon=True)
    teller.start()
    result = execute(cluster, os.fspath(workload("standby")), list(args), [],
                     sink=lambda fd, data: chunks.append((fd, data)), migrate_every=0.03,
                     machine="a")
    teller.join(10)
    out = b"".join(d for fd, d in chunks if fd == 1)
    err = b"".join(d for fd, d in chunks if fd == 2)
    assert (result.exit_status, out, err) == native_standby(*args)
    assert len(result.migrations) >= 2  # it was told to finish only after two
    names = list(cluster.machines)
    for m in result.migrations:
        assert set(m.as_dict()) >= RECORD_KEYS, m
        assert m.source in names and m.destination in names and m.source != m.destination
        assert m.seconds > 0 and m.bytes == m.pages * 4096
        assert set(PHASES) <= set(m.phases)
    stats = result.stats()
    assert stats["migrations"] == [m.as_dict() for m in result.migrations]
    assert stats["final_machine"] == result.machine
    for h in cluster.machines.values():
        assert_clean(h)


# --- a destination that dies mid-migration ----------------------------------------------------

FAULT_PHASES = ["create", "transform_space", "transform_program", "transform_start", "commit"]


@pytest.mark.parametrize("phase", FAULT_PHASES)
def test_destination_dies_at_phase(cluster: Cluster, phase: str) -> None:
    # The victim's whole actor process dies when the incoming migration reaches `phase`.
    victim = cluster.add_machine(config(f"victim-{phase.replace('_', '-')}",
                                        FaultSpec(phase=phase, action=FaultAction.EXIT)))
    try:
        check_destination_dies(cluster, victim, phase)
    finally:
        cluster.stop_machine(victim.name, graceful=False)  # gone: forget it


def check_destination_dies(cluster: Cluster, victim: MachineHandle, phase: str) -> None:
    a, b = cluster.machine("a"), cluster.machine("b")
    pid, taken = start_standby(a, "2")
    with pytest.raises(MachineError) as caught:
        a.migrate(pid, victim.name, timeout=120)
    assert isinstance(caught.value, MachineStoppedError), repr(caught.value)
    with pytest.raises(MachineStoppedError):
        victim.statistics(timeout=30)
    assert a.info(pid).state != "frozen"
    # The process is not stuck as migrating: it still moves to a live machine, and ends there.
    if phase == "transform_program":
        check_record(a.migrate(pid, "b", timeout=120), "a", "b")
        holder = b
    else:
        holder = a
    status, out, err, info = finish_standby(holder, pid, taken)
    assert (status, out, err) == native_standby("2")
    assert [m.destination for m in info.migrations] == (["b"] if holder is b else [])
    stats = a.statistics()
    assert stats.migrations.get("out_failed", 0) >= 1
    assert_clean(a)
    assert_clean(b)


def test_machine_replaced_under_the_same_name(cluster: Cluster) -> None:
    a = cluster.machine("a")
    phoenix = cluster.add_machine(config("phoenix"))
    pid, taken = start_standby(a, "2")
    check_record(a.migrate(pid, "phoenix", timeout=120), "a", "phoenix")  # a knows phoenix
    assert finish_standby(phoenix, pid, taken)[:3] == native_standby("2")
    cluster.stop_machine("phoenix")
    phoenix = cluster.add_machine(config("phoenix"))  # a new machine, the same name
    pid, taken = start_standby(a, "2")
    holder = a
    try:
        check_record(a.migrate(pid, "phoenix", timeout=120), "a", "phoenix")
        holder = phoenix
    finally:
        assert finish_standby(holder, pid, taken)[:3] == native_standby("2")
        cluster.stop_machine("phoenix")
