"""Balancer policies as plain functions over hand-built load snapshots (no Ray, no machines).

Every policy takes a list of `MachineLoad`s and proposes `Move`s; these tests build the
snapshots by hand, so each rule (threshold and margin, cordoned machines, free memory, evenness,
bounded moves, heterogeneous computations, age and cost ordering, drains, cool-down, the
measured cost model) is checked in isolation, plus a seeded randomized check of the invariants
every proposal must keep.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from support.machines import start

from tender_ray.balancing.policies import (
    POLICIES,
    Balancer,
    BalancerParams,
    MachineLoad,
    Move,
    Policy,
    ProcessLoad,
    age,
    cost_aware,
    drain_moves,
    greedy,
    none,
    snapshot,
    threshold,
)
from tender_ray.kernel.machine import Machine

MIB = 1 << 20
HEADROOM = 4 * MIB  # what a destination must have free beyond the process's resident bytes


def free_cost(_nbytes: int) -> float:
    return 0.0


def proc(pid: int, cpu: float = 1.0, state: str = "runnable", mib: float = 1.0,
         age_seconds: float | None = None) -> ProcessLoad:
    return ProcessLoad(pid=pid, name=f"p{pid}", state=state, cpu_seconds=cpu,
                       resident_bytes=int(mib * MIB),
                       age_seconds=cpu if age_seconds is None else age_seconds)


def machine(name: str, procs: Sequence[ProcessLoad] = (), computations: int = 1,
            free_mib: float = 512, cordoned: bool = False,
            runnable: int | None = None) -> MachineLoad:
    if runnable is None:
        runnable = sum(p.state in ("runnable", "running") for p in procs)
    return MachineLoad(name=name, computations=computations, runnable=runnable,
                       free_bytes=int(free_mib * MIB), cordoned=cordoned,
                       processes=tuple(procs))


def busy(name: str, n: int, first_pid: int, **kw: object) -> MachineLoad:
    """A machine with n runnable processes, pids first_pid.., cpu seconds 1..n."""
    return machine(name, [proc(first_pid + i, cpu=float(i + 1)) for i in range(n)],
                   **kw)  # type: ignore[arg-type]


def params(policy: Policy = Policy.THRESHOLD, **kw: object) -> BalancerParams:
    return BalancerParams(policy=policy, **kw)  # type: ignore[arg-type]


def apply(machines: Sequence[MachineLoad], moves: Sequence[Move]) -> dict[str, list[int]]:
    """Where every process would be after the moves: machine -> pids."""
    where = {p.pid: m.name for m in machines for p in m.processes}
    for mv in moves:
        assert where[mv.pid] == mv.source, f"{mv} does not start where the process is"
        where[mv.pid] = mv.destination
    out: dict[str, list[int]] = {m.name: [] for m in machines}
    for pid, name in where.items():
        out[name].append(pid)
    return out


def runnable_counts(machines: Sequence[MachineLoad], moves: Sequence[Move]) -> dict[str, int]:
    state = {p.pid: p.state for m in machines for p in m.processes}
    after = apply(machines, moves)
    return {n: sum(state[p] in ("runnable", "running") for p in pids)
            for n, pids in after.items()}


# --- none ------------------------------------------------------------------------------------

def test_none_proposes_nothing() -> None:
    machines = [busy("m0", 8, 1), machine("m1"), machine("m2", cordoned=True)]
    assert none(machines, params(Policy.NONE), free_cost) == []
    assert POLICIES[Policy.NONE] is none


def test_policy_table_is_complete() -> None:
    assert set(POLICIES) == set(Policy)


# --- threshold -------------------------------------------------------------------------------

def test_threshold_moves_from_the_overloaded_to_the_least_loaded() -> None:
    machines = [busy("m0", 4, 1), busy("m1", 1, 10), machine("m2")]
    moves = threshold(machines, params(margin=0.5, max_moves=1), free_cost)
    assert len(moves) == 1
    assert (moves[0].source, moves[0].destination, moves[0].reason) == ("m0", "m2",
                                                                        "threshold")


def test_threshold_spreads_to_each_least_loaded_in_turn() -> None:
    machines = [busy("m0", 4, 1), machine("m1"), machine("m2")]
    moves = threshold(machines, params(margin=0.5, max_moves=10), free_cost)
    assert sorted(m.destination for m in moves) == ["m1", "m2"]
    assert runnable_counts(machines, moves) == {"m0": 2, "m1": 1, "m2": 1}


def test_threshold_leaves_a_machine_within_the_margin() -> None:
    # mean 1.0: m0 at 2.0 is above it by exactly the margin 1.0, not more.
    machines = [busy("m0", 2, 1), busy("m1", 1, 10), machine("m2")]
    assert threshold(machines, params(margin=1.0), free_cost) == []
    assert len(threshold(machines, params(margin=0.5), free_cost)) == 1


def test_threshold_never_moves_to_a_cordoned_machine() -> None:
    machines = [busy("m0", 6, 1), machine("m1", cordoned=True), busy("m2", 1, 10),
                machine("m3", cordoned=True)]
    moves = threshold(machines, params(margin=0.0, max_moves=10), free_cost)
    assert moves, "m2 is free enough to take some"
    assert {m.destination for m in moves} == {"m2"}


def test_threshold_never_moves_to_a_machine_without_room_for_the_process() -> None:
    machines = [machine("m0", [proc(i, mib=40) for i in range(1, 5)]),
                machine("m1", free_mib=40),  # the least loaded, but 40 MiB < 40 + 4 MiB
                busy("m2", 1, 10, free_mib=200)]
    moves = threshold(machines, params(margin=0.0, max_moves=10), free_cost)
    big = [m for m in moves if m.pid < 10]  # the 40 MiB ones (m2's own pid 10 has 1 MiB)
    assert big
    assert all(m.destination == "m2" for m in big)


def test_threshold_no_move_when_no_machine_has_room() -> None:
    machines = [machine("m0", [proc(i, mib=100) for i in range(1, 5)]),
                machine("m1", free_mib=50), machine("m2", free_mib=103)]
    assert threshold(machines, params(margin=0.0, max_moves=10), free_cost) == []


def test_threshold_debits_free_memory_of_moves_planned_in_the_same_round() -> None:
    machines = [machine("m0", [proc(i, mib=100) for i in range(1, 5)]),
                machine("m1", free_mib=150)]
    moves = threshold(machines, params(margin=0.0, max_moves=10), free_cost)
    planned = sum(100 * MIB + HEADROOM for m in moves if m.destination == "m1")
    assert planned <= 150 * MIB, moves


def test_threshold_never_makes_the_pair_less_even() -> None:
    # m0 2, m1 1: moving one would only swap them.
    machines = [busy("m0", 2, 1), busy("m1", 1, 10)]
    assert threshold(machines, params(margin=0.0, max_moves=10), free_cost) == []
    # Heterogeneous: big (2 computations) at 1.5, small at 1.0: one more on small -> 2.0.
    machines = [busy("big", 3, 1, computations=2), busy("small", 1, 10)]
    assert threshold(machines, params(margin=0.0, max_moves=10), free_cost) == []


def test_threshold_respects_max_moves() -> None:
    machines = [busy("m0", 9, 1), machine("m1"), machine("m2")]
    for limit in (1, 2, 3):
        moves = threshold(machines, params(margin=0.0, max_moves=limit), free_cost)
        assert len(moves) == limit
    moves = threshold(machines, params(margin=0.0, max_moves=100), free_cost)
    assert runnable_counts(machines, moves) == {"m0": 3, "m1": 3, "m2": 3}


def test_threshold_does_not_move_sleeping_processes() -> None:
    procs = [proc(1, state="sleeping"), proc(2, state="sleeping"), proc(3, state="sleeping"),
             proc(4, state="zombie")]
    machines = [machine("m0", procs, runnable=4), machine("m1")]
    assert threshold(machines, params(margin=0.0, max_moves=10), free_cost) == []


def test_threshold_heterogeneous_loads_are_per_computation() -> None:
    # big has 2 computations and 2 processes (load 1), small has 0: a move to small is even.
    machines = [busy("big", 4, 1, computations=2), machine("small")]
    moves = threshold(machines, params(margin=0.0, max_moves=10), free_cost)
    assert [m.destination for m in moves] == ["small"]


def test_threshold_prefers_the_process_with_least_cpu() -> None:
    machines = [machine("m0", [proc(1, cpu=5.0), proc(2, cpu=0.5), proc(3, cpu=2.0)]),
                machine("m1")]
    moves = threshold(machines, params(margin=0.0, max_moves=1), free_cost)
    assert [m.pid for m in moves] == [2]


# --- greedy ----------------------------------------------------------------------------------

def test_greedy_heterogeneous_computations_get_proportional_work() -> None:
    machines = [machine("big", computations=2), busy("small0", 8, 1), machine("small1")]
    moves = greedy(machines, params(Policy.GREEDY, max_moves=100), free_cost)
    counts = runnable_counts(machines, moves)
    assert counts == {"big": 4, "small0": 2, "small1": 2}
    assert all(m.reason == "greedy" for m in moves)
    assert len(moves) == 6  # only the surplus moves


def test_greedy_moves_are_bounded() -> None:
    machines = [machine("big", computations=2), busy("small0", 8, 1), machine("small1")]
    for limit in (1, 2, 4):
        assert len(greedy(machines, params(Policy.GREEDY, max_moves=limit), free_cost)) == limit


@pytest.mark.parametrize("layout", [
    {"m0": 2, "m1": 2},
    {"m0": 3, "m1": 3, "m2": 3},
    {"m0": 0, "m1": 0},
    {"m0": 1, "m1": 1, "m2": 1},
])
def test_greedy_keeps_an_even_placement(layout: dict[str, int]) -> None:
    machines, pid = [], 1
    rng = random.Random(7)
    for name, n in layout.items():
        # cpu seconds vary: greedy's heaviest-first assignment must not reshuffle them
        machines.append(machine(name, [proc(pid + i, cpu=rng.uniform(0, 10))
                                       for i in range(n)]))
        pid += n
    assert greedy(machines, params(Policy.GREEDY, max_moves=100), free_cost) == []


def test_greedy_keeps_an_even_heterogeneous_placement() -> None:
    machines = [busy("big", 4, 1, computations=2), busy("small0", 2, 10),
                busy("small1", 2, 20)]
    assert greedy(machines, params(Policy.GREEDY, max_moves=100), free_cost) == []


def test_greedy_does_not_move_when_the_placement_is_as_even_as_it_can_be() -> None:
    machines = [busy("m0", 1, 1), busy("m1", 2, 10)]
    assert greedy(machines, params(Policy.GREEDY, max_moves=100), free_cost) == []


def test_greedy_never_moves_to_a_cordoned_machine_or_one_without_room() -> None:
    machines = [busy("m0", 6, 1), machine("m1", cordoned=True), machine("m2", free_mib=2),
                machine("m3")]
    moves = greedy(machines, params(Policy.GREEDY, max_moves=100), free_cost)
    assert moves
    assert {m.destination for m in moves} == {"m3"}


# --- age -------------------------------------------------------------------------------------

def test_age_picks_the_process_with_most_cpu_first() -> None:
    machines = [machine("m0", [proc(1, cpu=1.0), proc(2, cpu=9.0), proc(3, cpu=4.0),
                               proc(4, cpu=0.1)]), machine("m1"), machine("m2")]
    moves = age(machines, params(Policy.AGE, margin=0.0, max_moves=2), free_cost)
    assert [m.pid for m in moves] == [2, 3]
    assert all(m.reason == "age" for m in moves)
    # ... where threshold takes the youngest first
    assert [m.pid for m in threshold(machines, params(margin=0.0, max_moves=2),
                                     free_cost)] == [4, 1]


def test_age_keeps_the_threshold_rules() -> None:
    machines = [busy("m0", 2, 1), busy("m1", 1, 10), machine("m2", cordoned=True)]
    assert age(machines, params(Policy.AGE, margin=0.0, max_moves=10), free_cost) == []


# --- cost ------------------------------------------------------------------------------------

def hot() -> list[MachineLoad]:
    return [machine("m0", [proc(1, cpu=2.0), proc(2, cpu=3.0), proc(3, cpu=1.0),
                           proc(4, cpu=0.5)]), machine("m1")]


def test_cost_no_moves_when_migration_costs_more_than_it_saves() -> None:
    assert cost_aware(hot(), params(Policy.COST, margin=0.0), lambda b: 1e9) == []


def test_cost_moves_when_migration_is_cheap() -> None:
    moves = cost_aware(hot(), params(Policy.COST, margin=0.0, max_moves=1), lambda b: 1e-6)
    assert [(m.pid, m.source, m.destination) for m in moves] == [(2, "m0", "m1")]
    assert moves[0].reason.startswith("cost")


def test_cost_compares_saving_with_the_cost_of_that_process() -> None:
    # m0 load 4, m1 0: saving = cpu * (4 - 1) = 3 * cpu; pid 2 has 3.0 s -> saves 9 s.
    machines = hot()
    assert cost_aware(machines, params(Policy.COST, margin=0.0, max_moves=1),
                      lambda b: 8.9) != []
    assert cost_aware(machines, params(Policy.COST, margin=0.0, max_moves=1),
                      lambda b: 9.1) == []
    # The cost model is asked about the process's resident bytes.
    asked: list[int] = []

    def model(nbytes: int) -> float:
        asked.append(nbytes)
        return 0.0

    big = [machine("m0", [proc(1, cpu=5.0, mib=64), proc(2, cpu=1.0, mib=2)]),
           machine("m1")]
    cost_aware(big, params(Policy.COST, margin=0.0, max_moves=1), model)
    assert 64 * MIB in asked


def test_cost_a_new_process_saves_nothing() -> None:
    machines = [machine("m0", [proc(1, cpu=0.0), proc(2, cpu=0.0), proc(3, cpu=0.0)]),
                machine("m1")]
    assert cost_aware(machines, params(Policy.COST, margin=0.0), free_cost) == []


# --- drains ----------------------------------------------------------------------------------

def test_drain_moves_every_movable_process_off_cordoned_machines() -> None:
    procs = [proc(1), proc(2, state="running"), proc(3, state="sleeping", mib=30),
             proc(4, state="zombie"), proc(5, state="frozen"), proc(6, state="sleeping")]
    machines = [machine("m0", procs, cordoned=True), busy("m1", 1, 10), machine("m2")]
    moves = drain_moves(machines)
    assert sorted(m.pid for m in moves) == [1, 2, 3, 6]
    assert all(m.source == "m0" and m.reason == "drain" for m in moves)
    assert {m.destination for m in moves} <= {"m1", "m2"}
    # spread by load: m2 (empty) takes the first, then they alternate
    dest = Counter(m.destination for m in moves)
    assert dest["m2"] >= dest["m1"]
    assert moves[0].pid == 3  # largest first
    assert moves[0].destination == "m2"


def test_drain_ignores_policies_limits_and_uncordoned_machines() -> None:
    machines = [machine("m0", [proc(i) for i in range(1, 21)], cordoned=True),
                machine("m1"), busy("m2", 9, 100)]
    moves = drain_moves(machines)
    assert len(moves) == 20
    assert {m.source for m in moves} == {"m0"}


def test_drain_never_moves_onto_another_cordoned_machine_or_one_without_room() -> None:
    machines = [machine("m0", [proc(1, mib=50), proc(2)], cordoned=True),
                machine("m1", cordoned=True), machine("m2", free_mib=10), busy("m3", 3, 10)]
    moves = drain_moves(machines)
    # largest first; 50 MiB does not fit in m2's 10 MiB, so it goes to the busier m3
    assert [(m.pid, m.destination) for m in moves] == [(1, "m3"), (2, "m2")]


def test_drain_leaves_what_fits_nowhere() -> None:
    machines = [machine("m0", [proc(1, mib=500)], cordoned=True), machine("m1", free_mib=100)]
    assert drain_moves(machines) == []


def test_drain_with_nothing_cordoned_is_empty() -> None:
    assert drain_moves([busy("m0", 5, 1), machine("m1")]) == []


# --- the Balancer: drains first, cool-down, the measured cost model ---------------------------

def test_plan_drains_first_then_the_policy() -> None:
    b = Balancer(params(margin=0.0, max_moves=4))
    machines = [machine("m0", [proc(1), proc(2)], cordoned=True),
                busy("m1", 5, 10), machine("m2"), machine("m3")]
    moves = b.plan(machines, now=0.0)
    reasons = [m.reason for m in moves]
    assert reasons[:2] == ["drain", "drain"]
    assert "threshold" in reasons[2:]
    assert len({m.pid for m in moves}) == len(moves), "a pid is moved once per round"
    assert b.rounds == 1 and b.decisions == len(moves)


def test_plan_with_policy_none_still_drains() -> None:
    b = Balancer(params(Policy.NONE))
    machines = [machine("m0", [proc(1), proc(2, state="sleeping")], cordoned=True),
                busy("m1", 6, 10), machine("m2")]
    moves = b.plan(machines, now=0.0)
    assert sorted(m.pid for m in moves) == [1, 2]
    assert all(m.reason == "drain" for m in moves)


def test_plan_policy_never_duplicates_a_drain_move() -> None:
    b = Balancer(params(margin=0.0, max_moves=10))
    machines = [machine("m0", [proc(1), proc(2), proc(3)], cordoned=True), machine("m1"),
                machine("m2")]
    moves = b.plan(machines, now=0.0)
    assert sorted(m.pid for m in moves) == [1, 2, 3]


def test_cooldown_prevents_ping_pong() -> None:
    b = Balancer(params(margin=0.0, max_moves=1, cooldown=2.0))
    # t=10: pid 1 (least cpu) moves m0 -> m1
    first = b.plan([machine("m0", [proc(1, cpu=0.1), proc(2, cpu=5.0)]), machine("m1")],
                   now=10.0)
    assert [(m.pid, m.destination) for m in first] == [(1, "m1")]
    b.moved(1, 10.0)
    # Now m1 is the busy one and pid 1 its youngest: the policy would send it straight back.
    back = [machine("m0"), machine("m1", [proc(1, cpu=0.1), proc(3, cpu=5.0)])]
    assert [m.pid for m in threshold(back, b.params, b.cost)] == [1]
    assert b.plan(back, now=10.5) == []
    assert b.plan(back, now=11.99) == []
    assert [m.pid for m in b.plan(back, now=12.01)] == [1]


def test_cooldown_does_not_hold_back_drains() -> None:
    b = Balancer(params(margin=0.0, cooldown=100.0))
    b.moved(1, 0.0)
    moves = b.plan([machine("m0", [proc(1)], cordoned=True), machine("m1")], now=0.1)
    assert [(m.pid, m.reason) for m in moves] == [(1, "drain")]


def test_cost_model_default_before_any_measurement() -> None:
    b = Balancer(params(default_cost_per_mib=0.004))
    assert b.cost(0) == pytest.approx(0.01)
    assert b.cost(100 * MIB) == pytest.approx(0.41)


def test_cost_model_from_observations_is_fixed_plus_per_byte() -> None:
    b = Balancer()
    # Migrations measured: 10 ms fixed + 1 ms per MiB.
    for mib in (1, 10, 50, 100):
        b.observe(mib * MIB, 0.010 + 0.001 * mib)
    small, large = b.cost(1 * MIB), b.cost(200 * MIB)
    assert small >= 0.010, "a migration costs at least the fixed part"
    assert large > small
    # linear in bytes beyond the fixed part
    assert b.cost(300 * MIB) - b.cost(200 * MIB) == pytest.approx(
        b.cost(200 * MIB) - b.cost(100 * MIB))
    # slower migrations measured -> a higher prediction
    slow = Balancer()
    for mib in (1, 10, 50, 100):
        slow.observe(mib * MIB, 0.050 + 0.010 * mib)
    assert slow.cost(64 * MIB) > b.cost(64 * MIB)


def test_cost_model_uses_recent_measurements() -> None:
    b = Balancer()
    for _ in range(40):
        b.observe(10 * MIB, 5.0)  # old, slow
    for _ in range(32):
        b.observe(10 * MIB, 0.05)  # the last 32: fast
    assert b.cost(10 * MIB) < 1.0


def test_cost_model_predicts_what_was_measured() -> None:
    b = Balancer()
    b.observe(10 * MIB, 0.1)
    assert b.cost(10 * MIB) == pytest.approx(0.1, rel=0.1)
    b = Balancer()
    for mib in (1, 10, 50, 100):
        b.observe(mib * MIB, 0.010 + 0.001 * mib)
    assert b.cost(50 * MIB) == pytest.approx(0.060, rel=0.15)


def test_cost_policy_through_the_balancer_uses_its_cost_model() -> None:
    machines = hot()
    cheap = Balancer(params(Policy.COST, margin=0.0, max_moves=1))
    for _ in range(4):
        cheap.observe(1 * MIB, 0.001)
    assert cheap.plan(machines, now=0.0) != []
    dear = Balancer(params(Policy.COST, margin=0.0, max_moves=1))
    for _ in range(4):
        dear.observe(1 * MIB, 60.0)  # a minute per migration: never worth it here
    assert dear.plan(machines, now=0.0) == []


# --- invariants of every proposal, on random snapshots ------------------------------------------

STATES = ("runnable", "running", "sleeping", "zombie", "frozen")


def random_cluster(rng: random.Random) -> list[MachineLoad]:
    machines, pid = [], 1
    for i in range(rng.randint(1, 5)):
        procs = []
        for _ in range(rng.choice((0, 0, 1, 2, 3, 6, 10))):
            procs.append(proc(pid, cpu=rng.uniform(0, 20), state=rng.choice(STATES),
                              mib=rng.choice((1, 8, 40, 120))))
            pid += 1
        machines.append(machine(f"m{i}", procs, computations=rng.choice((1, 1, 2, 4)),
                                free_mib=rng.choice((5, 64, 256, 1024)),
                                cordoned=rng.random() < 0.2))
    return machines


def check_proposal(machines: Sequence[MachineLoad], moves: Sequence[Move], limit: int | None,
                   movable_states: tuple[str, ...]) -> None:
    by_name = {m.name: m for m in machines}
    state = {p.pid: p for m in machines for p in m.processes}
    assert len({m.pid for m in moves}) == len(moves), f"a pid moved twice: {moves}"
    if limit is not None:
        assert len(moves) <= limit
    for mv in moves:
        assert mv.source != mv.destination
        assert not by_name[mv.destination].cordoned, mv
        p = state[mv.pid]
        assert any(q.pid == mv.pid for q in by_name[mv.source].processes), mv
        assert p.state in movable_states, mv
        assert by_name[mv.destination].free_bytes >= p.resident_bytes + HEADROOM, mv


@pytest.mark.parametrize("policy", [threshold, age, greedy])
def test_policy_invariants_on_random_snapshots(
        policy: Callable[[Sequence[MachineLoad], BalancerParams, Callable[[int], float]],
                         list[Move]]) -> None:
    rng = random.Random(20240604)
    for _ in range(400):
        machines = random_cluster(rng)
        p = params(margin=rng.choice((0.0, 0.5, 1.0)), max_moves=rng.randint(1, 5))
        moves = policy(machines, p, free_cost)
        check_proposal(machines, moves, p.max_moves, ("runnable", "running"))
        if policy is not greedy:
            # every move makes its pair strictly more even, seen from the loads it used
            loads = {m.name: m.load for m in machines}
            caps = {m.name: m.computations for m in machines}
            for mv in moves:
                before = loads[mv.source] - loads[mv.destination]
                loads[mv.source] -= 1 / caps[mv.source]
                loads[mv.destination] += 1 / caps[mv.destination]
                assert loads[mv.source] >= loads[mv.destination] - 1e-9, mv
                assert loads[mv.source] - loads[mv.destination] < before, mv


def test_drain_invariants_on_random_snapshots() -> None:
    rng = random.Random(99)
    for _ in range(400):
        machines = random_cluster(rng)
        moves = drain_moves(machines)
        check_proposal(machines, moves, None, ("runnable", "running", "sleeping"))
        cordoned = {m.name for m in machines if m.cordoned}
        assert all(mv.source in cordoned for mv in moves)


def test_plan_invariants_on_random_snapshots() -> None:
    rng = random.Random(5)
    for policy in Policy:
        b = Balancer(params(policy, max_moves=3, cooldown=1.0))
        now = 0.0
        for _ in range(200):
            machines = random_cluster(rng)
            moves = b.plan(machines, now)
            assert len({m.pid for m in moves}) == len(moves)
            drains = [m for m in moves if m.reason == "drain"]
            assert moves[:len(drains)] == drains, "drains come first"
            assert len(moves) - len(drains) <= 3
            for mv in moves:
                b.moved(mv.pid, now)
            now += 0.3


# --- snapshot of a real machine -------------------------------------------------------------

def test_snapshot_of_a_machine(make_machine: Callable[..., Machine]) -> None:
    m = make_machine(name="snap", computations=2, memory_mib=32, engine="emulated")
    pid = start(m, "compute_sleep", "400")
    try:
        deadline = time.monotonic() + 30
        while m.info(pid).cpu_seconds == 0.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        load = snapshot(m.statistics(), m.list_processes(), time.time())
        assert (load.name, load.computations, load.cordoned) == ("snap", 2, False)
        assert 0 < load.free_bytes < 32 * MIB
        assert [p.pid for p in load.processes] == [pid]
        p = load.processes[0]
        assert p.name == "compute_sleep" and p.resident_bytes > 0
        assert p.state in ("runnable", "running", "sleeping")
        assert p.age_seconds >= 0.0 and p.cpu_seconds > 0.0
        assert load.movable == [p]
        m.cordon()
        assert snapshot(m.statistics(), m.list_processes(), time.time()).cordoned
    finally:
        m.kill(pid)
