"""Load balancing and draining by migration: policies are plain functions over load snapshots.

A policy looks at one snapshot of every machine and proposes moves; the `Balancer` adds what
keeps a cluster calm — a cool-down per process (no ping-pong), a bound on moves per round, and
draining, which overrides every policy: a cordoned machine's processes all leave. The
balancing loop (`loop.py`) feeds it snapshots and carries out its moves.
"""

from __future__ import annotations

import enum
import heapq
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.resources.real_memory import PAGE_SIZE


class Policy(str, enum.Enum):
    NONE = "none"
    THRESHOLD = "threshold"  # MOSIX-style: above the mean by a margin -> least loaded
    GREEDY = "greedy"  # Charm++ GreedyLB-style: reassign heaviest first, bounded moves
    AGE = "age"  # prefer processes that have run longest (they tend to run longer)
    COST = "cost"  # move only when the predicted saving beats the measured migration cost


@dataclass(frozen=True)
class ProcessLoad:
    pid: int
    name: str
    state: str
    cpu_seconds: float
    resident_bytes: int
    age_seconds: float  # wall time since it was created


@dataclass(frozen=True)
class MachineLoad:
    """What a policy knows of one machine."""

    name: str
    computations: int
    runnable: int  # runnable + running processes
    free_bytes: int
    cordoned: bool
    processes: tuple[ProcessLoad, ...]

    @property
    def load(self) -> float:
        return self.runnable / self.computations

    @property
    def movable(self) -> list[ProcessLoad]:
        return [p for p in self.processes if p.state in ("runnable", "running", "sleeping")]


@dataclass(frozen=True)
class Move:
    pid: int
    source: str
    destination: str
    reason: str


@dataclass(frozen=True)
class BalancerParams:
    policy: Policy = Policy.THRESHOLD
    margin: float = 0.5  # threshold: runnable per computation above the mean
    max_moves: int = 2  # per round
    cooldown: float = 1.0  # seconds before the same process may move again
    default_cost_per_mib: float = 0.004  # seconds, until migrations have been measured


def snapshot(stats: MachineStatistics, processes: Sequence[ProcessInfo],
             now: float) -> MachineLoad:
    """A machine's load, from its statistics and process list."""
    return MachineLoad(
        name=stats.name, computations=len(stats.computations), runnable=stats.runnable,
        free_bytes=stats.memory.frames_free * PAGE_SIZE, cordoned=stats.cordoned,
        processes=tuple(ProcessLoad(p.pid, p.name, p.state, p.cpu_seconds,
                                    p.resident_pages * PAGE_SIZE, max(0.0, now - p.created_at))
                        for p in processes))


# --- policies: (machines, params, cost model) -> proposed moves ---------------------------

CostModel = Callable[[int], float]  # resident bytes -> predicted migration seconds


def _targets(machines: Sequence[MachineLoad]) -> list[MachineLoad]:
    return [m for m in machines if not m.cordoned]


HEADROOM = 4 << 20  # bytes a destination keeps free beyond the process it takes


class _Destinations:
    """The machines that take processes, least loaded first, as a heap kept in step with
    `loads` (an entry whose load is no longer the machine's is stale and skipped): picking a
    destination costs O(log n) rather than a sort of every machine per move, which is what
    keeps a round over 1,000 machines within milliseconds (`tender-ray bench policy`)."""

    def __init__(self, loads: dict[str, float], machines: dict[str, MachineLoad]) -> None:
        self.loads = loads
        self._heap = [(load, name) for name, load in loads.items()
                      if not machines[name].cordoned]
        heapq.heapify(self._heap)

    def changed(self, name: str) -> None:
        """`loads[name]` changed (a move promised it a process)."""
        heapq.heappush(self._heap, (self.loads[name], name))

    def pick(self, free: dict[str, int], p: ProcessLoad, exclude: str) -> str | None:
        """The least loaded machine that takes processes and has room for `p`, counting what
        earlier moves of the same round already promised it."""
        skipped = []
        found = None
        while self._heap:
            load, name = self._heap[0]
            if load != self.loads[name]:  # stale: the machine's load has changed since
                heapq.heappop(self._heap)
                continue
            if name != exclude and free[name] >= p.resident_bytes + HEADROOM:
                found = name
                break
            skipped.append(heapq.heappop(self._heap))  # no room for p: maybe for the next
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        return found


def _promise(free: dict[str, int], p: ProcessLoad, src: str, dst: str) -> None:
    free[dst] -= p.resident_bytes
    free[src] += p.resident_bytes


def threshold(machines: Sequence[MachineLoad], params: BalancerParams,
              cost: CostModel) -> list[Move]:
    """Move from machines above the mean load by `margin` to the least loaded ones."""
    return _spread(machines, params, key=lambda p: p.cpu_seconds, reverse=False,
                   reason="threshold")


def age(machines: Sequence[MachineLoad], params: BalancerParams,
        cost: CostModel) -> list[Move]:
    """Like threshold, but move the process that has run longest first."""
    return _spread(machines, params, key=lambda p: p.cpu_seconds, reverse=True, reason="age")


def cost_aware(machines: Sequence[MachineLoad], params: BalancerParams,
               cost: CostModel) -> list[Move]:
    """Like age, but only when the predicted saving exceeds the predicted migration cost.

    Saving: a process that has run `a` seconds is expected to run about `a` more (the
    lifetime argument behind `age`); on a machine with load L it gets 1/L of a processor, on
    the destination with load L' it would get 1/(L'+1), so it finishes sooner by
    a*L - a*(L'+1) seconds of wall time, if positive.
    """
    moves = []
    by_name = {m.name: m for m in machines}
    for move in age(machines, params, cost):
        src, dst = by_name[move.source], by_name[move.destination]
        p = next(p for p in src.processes if p.pid == move.pid)
        saving = p.cpu_seconds * (max(src.load, 1.0) - (dst.load + 1.0))
        if saving > cost(p.resident_bytes):
            moves.append(Move(move.pid, move.source, move.destination,
                              f"cost: saves {saving:.3f}s > {cost(p.resident_bytes):.3f}s"))
    return moves


def _spread(machines: Sequence[MachineLoad], params: BalancerParams,
            key: Callable[[ProcessLoad], float], reverse: bool, reason: str) -> list[Move]:
    targets = _targets(machines)
    if len(targets) < 2:
        return []
    total_runnable = sum(m.runnable for m in machines)
    capacity = sum(m.computations for m in targets)
    mean = total_runnable / capacity
    loads = {m.name: m.load for m in machines}
    caps = {m.name: m.computations for m in machines}
    free = {m.name: m.free_bytes for m in machines}
    by_name = {m.name: m for m in machines}
    destinations = _Destinations(loads, by_name)
    moves: list[Move] = []
    for src in sorted(machines, key=lambda m: -m.load):
        if len(moves) >= params.max_moves:
            break
        if loads[src.name] <= mean + params.margin:
            continue  # not above the mean: nothing to sort its processes for
        candidates = sorted((p for p in src.movable if p.state != "sleeping"), key=key,
                            reverse=reverse)
        while candidates and loads[src.name] > mean + params.margin and \
                len(moves) < params.max_moves:
            p = candidates.pop(0)
            dst = destinations.pick(free, p, src.name)
            if dst is None or loads[dst] + 1 / caps[dst] > loads[src.name] - 1 / caps[src.name]:
                break  # moving would not make the pair more even
            moves.append(Move(p.pid, src.name, dst, reason))
            _promise(free, p, src.name, dst)
            loads[src.name] -= 1 / caps[src.name]
            loads[dst] += 1 / caps[dst]
            destinations.changed(src.name)
            destinations.changed(dst)
    return moves


def greedy(machines: Sequence[MachineLoad], params: BalancerParams,
           cost: CostModel) -> list[Move]:
    """GreedyLB: assign processes, heaviest (most CPU so far) first, each to the machine with
    the least load per computation; propose the moves that differ from today's placement,
    at most `max_moves`, preferring the ones that relieve the busiest machines."""
    targets = _targets(machines)
    if not targets:
        return []
    # Every process counts one: which machine gets how many does not depend on their order,
    # so they are not sorted here (each source's own are, below, the lightest to move first).
    procs = [(p, m.name) for m in machines for p in m.movable if p.state != "sleeping"]
    assigned = {m.name: 0 for m in targets}
    caps = {m.name: m.computations for m in machines}
    # Each process to the machine whose load per computation would be least with it: a
    # heap holding each machine once under the key it would have next, O(log n) a process.
    heap = [((0 + 1) / caps[n], n) for n in assigned]
    heapq.heapify(heap)
    for _ in procs:
        _, dst = heapq.heappop(heap)
        assigned[dst] += 1
        heapq.heappush(heap, ((assigned[dst] + 1) / caps[dst], dst))
    # Keep processes where they are when their machine ends up with the same count: only the
    # surplus has to move, and only while a move makes the two machines more even.
    current: dict[str, list[ProcessLoad]] = {}
    for p, where in procs:
        current.setdefault(where, []).append(p)
    count = {n: len(current.get(n, [])) for n in caps}
    surplus = {n: count[n] - assigned.get(n, 0) for n in caps}
    deficit = sorted((n for n in assigned if surplus[n] < 0), key=lambda n: surplus[n])
    free = {m.name: m.free_bytes for m in machines}
    moves: list[Move] = []
    for src in sorted(current, key=lambda n: -surplus[n]):
        if surplus[src] <= 0 or len(moves) >= params.max_moves:
            break  # sorted by surplus, and a move never raises another's above zero
        for p in sorted(current[src], key=lambda p: p.cpu_seconds):
            if surplus[src] <= 0 or len(moves) >= params.max_moves:
                break
            target = next((n for n in deficit if surplus[n] < 0 and
                           free[n] >= p.resident_bytes + HEADROOM and
                           (count[n] + 1) / caps[n] <= (count[src] - 1) / caps[src]), None)
            if target is None:
                break
            moves.append(Move(p.pid, src, target, "greedy"))
            _promise(free, p, src, target)
            surplus[src] -= 1
            surplus[target] += 1
            count[src] -= 1
            count[target] += 1
    return moves


def none(machines: Sequence[MachineLoad], params: BalancerParams,
         cost: CostModel) -> list[Move]:
    return []


POLICIES: dict[Policy, Callable[[Sequence[MachineLoad], BalancerParams, CostModel],
                                list[Move]]] = {
    Policy.NONE: none, Policy.THRESHOLD: threshold, Policy.GREEDY: greedy, Policy.AGE: age,
    Policy.COST: cost_aware,
}


def drain_moves(machines: Sequence[MachineLoad]) -> list[Move]:
    """Every process on a cordoned machine, each to the least loaded machine with room."""
    if not any(m.cordoned for m in machines):
        return []
    loads = {m.name: m.load for m in machines}
    caps = {m.name: m.computations for m in machines}
    free = {m.name: m.free_bytes for m in machines}
    by_name = {m.name: m for m in machines}
    destinations = _Destinations(loads, by_name)
    moves = []
    for m in machines:
        if not m.cordoned:
            continue
        for p in sorted(m.movable, key=lambda p: -p.resident_bytes):
            dst = destinations.pick(free, p, m.name)
            if dst is None:
                continue
            moves.append(Move(p.pid, m.name, dst, "drain"))
            _promise(free, p, m.name, dst)
            loads[dst] += 1 / caps[dst]
            destinations.changed(dst)
    return moves


@dataclass
class Balancer:
    """The policy plus the rules that keep it calm; plain logic, fed by the balancer actor."""

    params: BalancerParams = field(default_factory=BalancerParams)
    last_moved: dict[int, float] = field(default_factory=dict)  # pid -> time of its last move
    costs: list[tuple[int, float]] = field(default_factory=list)  # (bytes, seconds) measured
    decisions: int = 0
    rounds: int = 0

    def cost(self, nbytes: int) -> float:
        """Predicted seconds to migrate `nbytes`, from the migrations measured so far."""
        if not self.costs:
            return self.params.default_cost_per_mib * (nbytes / (1 << 20)) + 0.01
        recent = self.costs[-32:]
        sizes = [b for b, _ in recent]
        if len(set(sizes)) < 2:  # one size seen: proportional to it
            return statistics.median(s / max(b, 1) for b, s in recent) * nbytes
        # fixed + per-byte, fitted by least squares, neither part negative
        per_byte, fixed = np.polyfit(sizes, [s for _, s in recent], 1)
        return max(0.0, float(fixed)) + max(0.0, float(per_byte)) * nbytes

    def observe(self, nbytes: int, seconds: float) -> None:
        self.costs.append((nbytes, seconds))

    def plan(self, machines: Sequence[MachineLoad], now: float) -> list[Move]:
        """This round's moves: every drain first, then the policy's, within the limits."""
        self.rounds += 1
        moves = drain_moves(machines)
        drained = {m.pid for m in moves}
        if self.params.policy is not Policy.NONE:
            proposed = POLICIES[self.params.policy](machines, self.params, self.cost)
            for m in proposed:
                if m.pid in drained:
                    continue
                if now - self.last_moved.get(m.pid, -1e9) < self.params.cooldown:
                    continue
                moves.append(m)
        self.decisions += len(moves)
        return moves

    def moved(self, pid: int, now: float) -> None:
        self.last_moved[pid] = now
