"""The migration benchmark: the paper's claims as ratios measured side by side in one run.

For processes with 1, 16 and 128 MiB touched, it migrates the same process back and forth
between two machine actors under each strategy, and measures on the same cluster the baselines
the ratios need: a raw object-store transfer of the same bytes plus three actor round trips
(the lower bound), and what a Ray user would do instead (a new actor restoring the state).
Run once per engine:

    python -m tender_ray.bench.migration [--sizes 1,16,128] [--repeats 5] [--json out.json]
    tender-ray bench migration ...  (the same)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tender_ray.bench.options import DEFAULT_ENGINES, usable_engines
from tender_ray.cluster.cluster import Cluster
from tender_ray.config import Engine, MachineConfig, workload
from tender_ray.errors import UsageError
from tender_ray.migration.options import MigrationOptions, Resources, Transfer
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.real_memory import PAGE_SIZE

# move_all first: it leaves the program image on both plates, so the process can move with
# every strategy afterwards.
STRATEGIES: dict[str, MigrationOptions] = {
    "move_all": MigrationOptions(resources=Resources.ALL),
    "dsm": MigrationOptions(),
    "plate": MigrationOptions(transfer=Transfer.PLATE),
    "no_reuse": MigrationOptions(reuse=False),
}


def _median_record(records: list[MigrationRecord]) -> dict[str, Any]:
    phases = sorted({k for r in records for k in r.phases})
    return {
        "seconds": statistics.median(r.seconds for r in records),
        "bytes": records[0].bytes, "pages": records[0].pages,
        "phases": {k: statistics.median(r.phases.get(k, 0.0) for r in records)
                   for k in phases},
        "runs": len(records)}


def _wait_touched(cluster: Cluster, machine: str, pid: int, nbytes: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = cluster.machine(machine).info(pid)
        if info.resident_pages * PAGE_SIZE >= nbytes:
            return
        if info.state == "zombie":
            raise RuntimeError(f"memhold ended early: {info.exit_reason}")
        time.sleep(0.05)
    raise RuntimeError("memhold did not touch its memory within 120 s")


def migration_benchmark(sizes_mib: tuple[int, ...] = (1, 16, 128), repeats: int = 5,
                        cluster: Cluster | None = None,
                        engine: str = "emulated") -> dict[str, Any]:
    """Run the benchmark on a fresh embedded cluster (or the one given); a JSON-able dict.

    `engine` runs the benchmark's machines on that engine ("native" or "emulated"); run it
    once per engine to compare them (the machines are named per engine)."""
    own = cluster is None
    if cluster is None:
        cluster = Cluster(num_cpus=2, object_store_mib=max(512, 3 * max(sizes_mib)))
    memory = max(256, 2 * max(sizes_mib) + 64)
    names = (f"bench0-{engine}", f"bench1-{engine}")
    for name in names:
        if name not in cluster.machines:
            cluster.add_machine(MachineConfig(name=name, memory_mib=memory, pool_size=4,
                                              engine=Engine(engine)))
    src, dst = (cluster.machine(n) for n in names)
    results: list[dict[str, Any]] = []
    try:
        image = workload("memhold").read_bytes()
        dst_node = dst.node_id()
        for size in sizes_mib:
            nbytes = size << 20
            pid = src.exec(image, "memhold", ["memhold", str(size), "1000000", "5"])
            _wait_touched(cluster, src.name, pid, nbytes)
            where = [src, dst]
            per_strategy: dict[str, dict[str, Any]] = {}
            for label, options in STRATEGIES.items():
                records = []
                # A first move to warm code paths, then the measured ones, back and forth.
                for i in range(repeats + 1):
                    a, b = where
                    record = a.migrate(pid, b.name, options)
                    where = [b, a]
                    if i:
                        records.append(record)
                per_strategy[label] = _median_record(records)
            # Baselines, from the machine that holds the process now, with the same bytes.
            moved = per_strategy["dsm"]["bytes"]
            holder, other = where
            probe = cluster.probe(holder.name).transfer(cluster.probe(other.name), moved, repeats)
            other_node = other.node_id() if other is not dst else dst_node
            actor_restore = cluster.probe(holder.name).actor_restore(other_node, moved, repeats)
            holder.kill(pid)
            holder.reap(pid)
            results.append(_ratios(size, per_strategy, probe, actor_restore))
    finally:
        if own:
            cluster.shutdown()
    return {"sizes": results, "repeats": repeats, "engine": engine,
            "targets": {"lower_bound_ratio": "<= 1.3", "vs_ray_actor_speedup": ">= 10",
                        "reuse_speedup": ">= 3", "dsm_vs_plate_speedup": ">= 3",
                        "needed_only_speedup": ">= 1.5"},
            "host": {"cpus": os.cpu_count()}}


def _ratios(size: int, s: dict[str, dict[str, Any]], probe: dict[str, float],
            actor_restore: float) -> dict[str, Any]:
    dsm = s["dsm"]
    lower_bound = probe["transfer"] + 3 * probe["rtt"]

    def create_delete(r: dict[str, Any]) -> float:
        return float(r["phases"].get("create", 0.0) + r["phases"].get("delete", 0.0))

    return {
        "mib": size, "bytes": dsm["bytes"], "pages": dsm["pages"],
        "migration_seconds": dsm["seconds"],
        "raw_transfer_seconds": probe["transfer"], "round_trip_seconds": probe["rtt"],
        "ray_actor_restore_seconds": actor_restore,
        "lower_bound_ratio": dsm["seconds"] / lower_bound,
        "vs_ray_actor_speedup": actor_restore / dsm["seconds"],
        "reuse_speedup": create_delete(s["no_reuse"]) / create_delete(dsm),
        "dsm_vs_plate_speedup": s["plate"]["seconds"] / dsm["seconds"],
        "needed_only_speedup": s["move_all"]["seconds"] / dsm["seconds"],
        "strategies": s,
    }


def print_migration_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tender-ray migration benchmark (medians; ratios measured side by side)")
    for col in ("MiB touched", "migration ms", "raw+3RTT ms", "lower_bound_ratio",
                "vs_ray_actor", "reuse", "dsm_vs_plate", "needed_only"):
        table.add_column(col, justify="right")
    for r in result["sizes"]:
        table.add_row(str(r["mib"]), f"{1000 * r['migration_seconds']:.1f}",
                      f"{1000 * (r['raw_transfer_seconds'] + 3 * r['round_trip_seconds']):.1f}",
                      f"{r['lower_bound_ratio']:.2f}", f"{r['vs_ray_actor_speedup']:.1f}x",
                      f"{r['reuse_speedup']:.2f}x", f"{r['dsm_vs_plate_speedup']:.2f}x",
                      f"{r['needed_only_speedup']:.2f}x")
    console = Console()
    console.print(table)
    phases = Table(title="phases of a DSM migration, ms (median)")
    names = ("freeze", "create", "create_call", "export", "transform_space",
             "transform_program", "transform_start", "transform_call", "commit", "delete")
    phases.add_column("MiB", justify="right")
    for n in names:
        phases.add_column(n, justify="right")
    for r in result["sizes"]:
        ph = r["strategies"]["dsm"]["phases"]
        phases.add_row(str(r["mib"]), *[f"{1000 * ph.get(n, 0.0):.2f}" for n in names])
    console.print(phases)
    console.print("targets: " + ", ".join(f"{k} {v}" for k, v in result["targets"].items()))


def main(argv: Sequence[str] | None = None,
         prog: str = "python -m tender_ray.bench.migration") -> int:
    """The migration benchmark's command line: one table per engine."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Migration time against its lower bound, a Ray actor "
                               "restore, and strategy against strategy.")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    parser.add_argument("--sizes", default="1,16,128", help="MiB touched, comma-separated")
    parser.add_argument("--repeats", type=int, default=5,
                        help="migrations per strategy and size")
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help="engines to measure side by side (comma-separated; an engine "
                             "that cannot run here is skipped with a notice)")
    ns = parser.parse_args(argv)
    try:
        sizes = tuple(int(x) for x in ns.sizes.split(","))
    except ValueError:
        parser.error(f"--sizes must be comma-separated MiB, got {ns.sizes!r}")
    try:
        engines = usable_engines(ns.engines)
    except UsageError as exc:
        parser.error(str(exc))
    result: dict[str, Any] = {}
    for engine in engines:
        result[engine] = migration_benchmark(sizes, repeats=ns.repeats, engine=engine)
        print(f"engine: {engine}")
        print_migration_table(result[engine])
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
