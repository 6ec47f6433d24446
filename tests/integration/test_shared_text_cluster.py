"""Content-addressed text between machine actors: a process moved to a machine that already
runs its program sends no text page through the object store (its record says so), and both
processes print what they print natively."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.clusters import own_cluster
from support.machines import assert_clean, finish_standby, start_standby
from support.programs import native_standby

from tender_ray.cluster import Cluster
from tender_ray.config import MachineConfig
from tender_ray.migration.options import MigrationMode, MigrationOptions

ARGS = ("1", "spin")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster(MachineConfig(name=name, memory_mib=64, quantum_us=1000,
                                   engine="emulated") for name in ("a", "b")) as c:
        yield c


def test_move_to_a_machine_running_the_program_sends_no_text(cluster: Cluster) -> None:
    a, b = cluster.machine("a"), cluster.machine("b")
    there, there_taken = start_standby(b, *ARGS)
    mover, mover_taken = start_standby(a, *ARGS)
    record = a.migrate(mover, "b")
    assert record.ok and record.text_shared and record.text_bytes == 0
    assert record.pages > 0 and record.bytes == record.pages * 4096
    assert finish_standby(b, there, there_taken)[:3] == native_standby(*ARGS)
    back = b.migrate(mover, "a")  # a no longer runs it: the text travels
    assert not back.text_shared and back.text_bytes > 0
    assert finish_standby(a, mover, mover_taken)[:3] == native_standby(*ARGS)
    assert_clean(a)
    assert_clean(b)


def test_precopy_to_a_machine_running_the_program_sends_no_text(cluster: Cluster) -> None:
    """Pre-copy between actors: the live rounds and the freeze carry no text page there (0
    text bytes in the record); back where the program does not run, the text travels."""
    precopy = MigrationOptions(mode=MigrationMode.PRECOPY)
    a, b = cluster.machine("a"), cluster.machine("b")
    there, there_taken = start_standby(b, *ARGS)
    mover, mover_taken = start_standby(a, *ARGS)
    record = a.migrate(mover, "b", precopy)
    assert record.ok and record.mode == "precopy" and record.rounds >= 1
    assert record.text_shared and record.text_bytes == 0
    assert record.bytes == sum(record.round_bytes) + record.freeze_bytes
    assert finish_standby(b, there, there_taken)[:3] == native_standby(*ARGS)
    back = b.migrate(mover, "a", precopy)
    assert back.ok and not back.text_shared and back.text_bytes > 0
    assert finish_standby(a, mover, mover_taken)[:3] == native_standby(*ARGS)
    assert_clean(a)
    assert_clean(b)
