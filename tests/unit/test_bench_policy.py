"""The policy benchmark: its simulated snapshots are valid inputs, every policy's round over
them plans moves a balancer could carry out (each process once, from where it is, to a machine
that takes processes and has room), and the command reports every policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tender_ray.balancing.policies import HEADROOM, Balancer, BalancerParams, Policy
from tender_ray.bench.policy import main, policy_benchmark, simulated_machines


@pytest.mark.parametrize("policy", list(Policy))
def test_every_policy_plans_moves_that_can_be_carried_out(policy: Policy) -> None:
    machines = simulated_machines(300, seed=3)
    by_name = {m.name: m for m in machines}
    where = {p.pid: m.name for m in machines for p in m.processes}
    size = {p.pid: p.resident_bytes for m in machines for p in m.processes}
    moves = Balancer(BalancerParams(policy=policy, max_moves=8)).plan(machines, now=0.0)
    assert len({m.pid for m in moves}) == len(moves)
    free = {m.name: m.free_bytes for m in machines}
    for move in moves:
        assert where[move.pid] == move.source != move.destination
        assert not by_name[move.destination].cordoned
        free[move.destination] -= size[move.pid]
        assert free[move.destination] >= HEADROOM
    drained = [m for m in moves if by_name[m.source].cordoned]
    movable_on_cordoned = sum(len(m.movable) for m in machines if m.cordoned)
    assert movable_on_cordoned > 0 and len(drained) == movable_on_cordoned
    assert all(m.reason == "drain" for m in drained)
    if policy is not Policy.NONE:
        assert len(moves) > len(drained)  # the skew gives every policy work to do


def test_the_command_reports_every_policy(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    status = main(["--machines", "200", "--rounds", "3", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["policies"]) == {p.value for p in Policy}
    for r in result["policies"].values():
        assert 0 < r["median_ms"] <= r["p95_ms"]
    assert status == (0 if all(r["within_target"] for r in result["policies"].values()) else 1)
    assert result == {**result, "machines": 200, "rounds": 3}
    assert policy_benchmark(50, 2)["processes"] == sum(
        len(m.processes) for m in simulated_machines(50))
