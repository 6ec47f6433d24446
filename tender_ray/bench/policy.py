"""The pure-policy benchmark: how long one balancing round (`Balancer.plan`: drains, then the
policy) takes over many simulated machine snapshots, per policy, without Ray or machines —
the planning cost a balancer adds at scale. Reports the median and 95th percentile of the
rounds; the target is a round under 10 ms for 1,000 machines."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tender_ray.balancing.policies import (
    Balancer,
    BalancerParams,
    MachineLoad,
    Policy,
    ProcessLoad,
)

TARGET_MS = 10.0  # one round for 1,000 machines, at most
STATES = ("runnable", "running", "sleeping", "runnable", "running")  # mostly busy


def simulated_machines(count: int, *, processes: int = 10, cordoned: float = 0.01,
                       seed: int = 0) -> list[MachineLoad]:
    """`count` machine snapshots, seeded: 1-4 computations each, up to twice `processes`
    processes of 64 KiB-64 MiB, skewed so some machines are far above the mean; a fraction
    `cordoned` is being drained."""
    rng = random.Random(seed)
    machines = []
    pid = 1000
    for i in range(count):
        hot = rng.random() < 0.1  # a tenth of the machines carry most of the work
        n = rng.randint(processes, 2 * processes) if hot else rng.randint(0, processes // 2)
        procs = []
        for _ in range(n):
            pid += 1
            procs.append(ProcessLoad(pid, f"p{pid}", rng.choice(STATES),
                                     cpu_seconds=rng.expovariate(0.2),
                                     resident_bytes=rng.randint(16, 16384) * 4096,
                                     age_seconds=rng.uniform(0, 120)))
        runnable = sum(1 for p in procs if p.state != "sleeping")
        machines.append(MachineLoad(f"m{i}", rng.randint(1, 4), runnable,
                                    free_bytes=rng.randint(64, 1024) << 20,
                                    cordoned=rng.random() < cordoned,
                                    processes=tuple(procs)))
    return machines


def policy_benchmark(machines: int = 1000, rounds: int = 50, processes: int = 10,
                     seed: int = 0) -> dict[str, Any]:
    """Seconds per round of every policy over the same snapshots; each policy's rounds see a
    balancer with measured migration costs (so the cost policy fits its model)."""
    loads = simulated_machines(machines, processes=processes, seed=seed)
    out: dict[str, Any] = {"machines": machines, "rounds": rounds,
                           "processes": sum(len(m.processes) for m in loads),
                           "target_ms": TARGET_MS, "policies": {}}
    for policy in Policy:
        balancer = Balancer(BalancerParams(policy=policy, max_moves=8))
        for mib in (1, 8, 64):
            balancer.observe(mib << 20, 0.01 + 0.004 * mib)
        times, moves = [], 0
        for r in range(rounds):
            start = time.perf_counter()
            planned = balancer.plan(loads, now=1000.0 + r * 10)
            times.append(time.perf_counter() - start)
            moves = len(planned)
        times.sort()
        median = statistics.median(times) * 1000
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))] * 1000
        out["policies"][policy.value] = {"median_ms": median, "p95_ms": p95, "moves": moves,
                                         "within_target": p95 <= TARGET_MS}
    return out


def print_policy_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"one round over {result['machines']} machines, "
                        f"{result['processes']} processes ({result['rounds']} rounds)")
    for col in ("policy", "median ms", "p95 ms", "moves", f"≤ {result['target_ms']:.0f} ms"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in result["policies"].items():
        table.add_row(name, f"{r['median_ms']:.2f}", f"{r['p95_ms']:.2f}", str(r["moves"]),
                      "yes" if r["within_target"] else "[red]no[/red]")
    Console().print(table)


def main(argv: Sequence[str] | None = None,
         prog: str = "python -m tender_ray.bench.policy") -> int:
    """The policy benchmark's command line; exit status 1 when a policy misses the target."""
    parser = argparse.ArgumentParser(
        prog=prog, description="One balancing round (drains and the policy) over simulated "
                               "machine snapshots, per policy: median and p95 time.")
    parser.add_argument("--machines", type=int, default=1000, help="simulated machines")
    parser.add_argument("--rounds", type=int, default=50, help="rounds timed per policy")
    parser.add_argument("--processes", type=int, default=10,
                        help="processes on a busy machine (between this and twice as many)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated snapshots")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    ns = parser.parse_args(argv)
    if ns.machines < 1 or ns.rounds < 1 or ns.processes < 1:
        parser.error("--machines, --rounds and --processes must be at least 1")
    result = policy_benchmark(ns.machines, ns.rounds, ns.processes, ns.seed)
    print_policy_table(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["within_target"] for r in result["policies"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
