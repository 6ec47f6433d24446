"""The benchmark probe: an actor started next to a machine (on its node) that measures what
the migration benchmark compares migrations with — a raw object-store transfer between two
nodes, an actor round trip, and restoring state into a fresh actor, the Ray user's way."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tender_ray.cluster.handles import ProbeHandle


def _block(nbytes: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.ones((max(1, nbytes // 4096), 4096), dtype=np.uint8)


class ProbeActor:
    """Measures transfers from its node; reached through `ProbeHandle`."""

    def ping(self) -> str:
        return "probe"

    def transfer(self, destination: ProbeHandle, nbytes: int, repeats: int
                 ) -> dict[str, float]:
        block = _block(nbytes)
        transfer, rtt = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            destination.receive(ray.put(block))
            transfer.append(time.perf_counter() - t)
        for _ in range(3 * repeats):
            t = time.perf_counter()
            destination.ping()
            rtt.append(time.perf_counter() - t)
        return {"transfer": statistics.median(transfer), "rtt": statistics.median(rtt)}

    def receive_block(self, refs: list[Any]) -> int:
        # The ref comes inside a list so that Ray does not fetch it before the call: the
        # fetch is what is measured.
        block = ray.get(refs[0])
        scratch = np.empty_like(block)
        scratch[...] = block  # the copy into real memory a migration makes too
        return int(scratch.nbytes)

    def actor_restore(self, node_id: str, nbytes: int, repeats: int) -> float:
        block = _block(nbytes)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            actor = _RemoteState.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote([ray.put(block)])
            ray.get(actor.ready.remote())
            times.append(time.perf_counter() - t)
            ray.kill(actor)
        return statistics.median(times)


RemoteProbe: Any = ray.remote(ProbeActor)


class _StateActor:
    """A plain Ray actor holding restored state: the baseline a migration is compared with."""

    def __init__(self, refs: list[Any]) -> None:
        self.state = np.array(ray.get(refs[0]))  # restore: copy into the actor's own memory

    def ready(self) -> bool:
        return True


_RemoteState: Any = ray.remote(_StateActor)
