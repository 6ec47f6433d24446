"""A move larger than a share of the object store, streamed through it: the destination
fetches the page blocks its source left behind as it copies them, and the program ends
exactly as natively; the source's offers are gone once the move is over, and deleted
processes' frames are held for the next arrival."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.clusters import own_cluster
from support.machines import finish_standby, start_standby
from support.programs import native_standby

from tender_ray.cluster import Cluster
from tender_ray.config import Engine, MachineConfig
from tender_ray.migration.options import MigrationOptions

# 256 MiB of object store (own_cluster's): a migration uses at most an eighth of it at a
# time, so 48 MiB touched travels in several groups, most of them fetched from the source.
MIB = "48"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    configs = (MachineConfig(name=n, memory_mib=160, quantum_us=1000, engine=Engine.EMULATED)
               for n in ("s0", "s1"))
    with own_cluster(configs) as c:
        yield c


def test_a_move_larger_than_the_store_share_is_streamed_and_exact(cluster: Cluster) -> None:
    a, b = cluster.machine("s0"), cluster.machine("s1")
    pid, taken = start_standby(a, MIB)
    where = [a, b]
    for _ in range(3):
        source, destination = where
        record = source.migrate(pid, destination.name, MigrationOptions())
        assert record.result == "ok" and record.bytes >= int(MIB) << 20
        where = [destination, source]
    # The source that the process left last holds its frames for reuse: counted as free.
    left = where[1].statistics().memory
    assert left.frames_held > 0 and left.frames_free == left.frames_total
    status, out, err, _ = finish_standby(where[0], pid, taken)
    assert (status, out, err) == native_standby(MIB)
