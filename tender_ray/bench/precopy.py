"""Pre-copy against stop-and-copy: how long a process does not run while it moves (its freeze)
and how many bytes travel, for the same process moved both ways in one run.

For each size, a `writeset` process with that much heap touched is moved back and forth
between two machine actors (pages through the object store), alternately by stop-and-copy and
by pre-copy, once with a working set that it does not write (it only naps) and once with one
it keeps rewriting (an eighth of its heap, every page each pass). Ratios, of the medians:

- precopy_freeze_ratio: pre-copy freeze ÷ stop-and-copy freeze of the same process;
- precopy_bytes_ratio: bytes pre-copy sent (every round and the freeze) ÷ resident bytes;
- precopy_vs_stop_bytes: the same ÷ what stop-and-copy sent.

The process verifies its whole heap when it ends; a run whose check fails is an error. On the
native engine the tracking pre-copy needs costs a trap per first write to a page in a round,
so a writing process runs far slower while it is pre-copied (`bench engine --tracking`).

    tender-ray bench precopy [--sizes 16,64,256] [--repeats 3] [--engines emulated]
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

from tender_ray.bench.options import usable_engines
from tender_ray.cluster.cluster import Cluster
from tender_ray.config import Engine, MachineConfig, workload
from tender_ray.errors import UsageError
from tender_ray.migration.options import MigrationMode, MigrationOptions
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.real_memory import PAGE_SIZE

DEFAULT_SIZES = (16, 64, 256)
TARGETS = {"precopy_freeze_ratio": "<= 0.1 at 256 MiB",
           "precopy_bytes_ratio": "<= 1.5 for the writing working set"}
WRITE_SHARE = 8  # the writing working set: 1/8 of the heap
READY = b"writeset: ready\n"
# The phases of a migration that fall in its freeze (from the freeze to the commit).
FREEZE_PHASES = ("freeze", "export", "transform_space", "transform_program", "transform_start",
                 "transform_call", "commit")
MODES = {"stop": MigrationOptions(mode=MigrationMode.STOP),
         "precopy": MigrationOptions(mode=MigrationMode.PRECOPY)}


def _wait_ready(cluster: Cluster, machine: str, pid: int) -> None:
    handle = cluster.machine(machine)
    out = b""
    deadline = time.monotonic() + 300
    while READY not in out:
        taken, _ = handle.take_output(pid)
        out += taken
        if READY in out:
            return
        info = handle.info(pid)
        if info.state == "zombie":
            raise RuntimeError(f"writeset ended before it was ready: {info.exit_reason}")
        if time.monotonic() > deadline:
            raise RuntimeError("writeset did not touch its memory within 300 s")
        time.sleep(0.05)


def _summary(records: list[MigrationRecord]) -> dict[str, Any]:
    return {"freeze_seconds": statistics.median(r.freeze_seconds for r in records),
            "seconds": statistics.median(r.seconds for r in records),
            "bytes": statistics.median(r.bytes for r in records),
            "freeze_bytes": statistics.median(r.freeze_bytes for r in records),
            "rounds": statistics.median(r.rounds for r in records),
            "round_bytes": [list(r.round_bytes) for r in records],
            "dirty_rate_mb_s": statistics.median(r.dirty_rate for r in records) / 1e6,
            "phases": {k: statistics.median(r.phases.get(k, 0.0) for r in records)
                       for k in sorted({k for r in records for k in r.phases})},
            "runs": len(records)}


def _one(cluster: Cluster, names: tuple[str, str], size: int, write_mib: int,
         repeats: int) -> dict[str, Any]:
    """One process of `size` MiB writing `write_mib` of it, moved by each mode in turn."""
    src, dst = (cluster.machine(n) for n in names)
    image = workload("writeset").read_bytes()
    pid = src.exec(image, "writeset", ["writeset", str(size), str(write_mib)])
    _wait_ready(cluster, src.name, pid)
    where = [src, dst]
    records: dict[str, list[MigrationRecord]] = {m: [] for m in MODES}
    resident = 0
    for i in range(repeats + 1):  # the first of each mode warms code paths: not counted
        for mode, options in MODES.items():
            a, b = where
            resident = a.info(pid).resident_pages * PAGE_SIZE
            record = a.migrate(pid, b.name, options, timeout=600)
            where = [b, a]
            if i:
                records[mode].append(record)
    holder = where[0]
    holder.kill(pid, 10)  # SIGUSR1: verify the heap and end
    info = holder.wait(pid, 600)
    _, out, _ = holder.reap(pid)
    if info.exit_status != 0 or b"verify: ok" not in out:
        raise RuntimeError(f"writeset {size} {write_mib} came back wrong: {out!r}")
    stop, pre = _summary(records["stop"]), _summary(records["precopy"])
    return {"mib": size, "write_mib": write_mib, "resident_bytes": resident,
            "stop": stop, "precopy": pre,
            "precopy_freeze_ratio": pre["freeze_seconds"] / stop["freeze_seconds"],
            "precopy_bytes_ratio": pre["bytes"] / resident,
            "precopy_vs_stop_bytes": pre["bytes"] / stop["bytes"]}


def precopy_benchmark(sizes_mib: tuple[int, ...] = DEFAULT_SIZES, repeats: int = 3,
                      engine: str = "emulated", cluster: Cluster | None = None
                      ) -> dict[str, Any]:
    """Run the benchmark on a fresh embedded cluster (or the one given); a JSON-able dict."""
    own = cluster is None
    if cluster is None:
        cluster = Cluster(num_cpus=2, object_store_mib=max(512, 3 * max(sizes_mib)))
    names = (f"pre0-{engine}", f"pre1-{engine}")
    for name in names:
        if name not in cluster.machines:
            cluster.add_machine(MachineConfig(name=name, memory_mib=2 * max(sizes_mib) + 128,
                                              pool_size=4, engine=Engine(engine)))
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes_mib:
            for write_mib in (0, max(1, size // WRITE_SHARE)):
                rows.append(_one(cluster, names, size, write_mib, repeats))
    finally:
        if own:
            cluster.shutdown()
    return {"rows": rows, "repeats": repeats, "engine": engine, "targets": dict(TARGETS),
            "host": {"cpus": os.cpu_count()}}


def print_precopy_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pre-copy against stop-and-copy, {result['engine']} engine "
                        "(medians; measured side by side)")
    for col in ("MiB", "writing MiB", "stop freeze ms", "precopy freeze ms",
                "precopy_freeze_ratio", "stop total ms", "precopy total ms", "rounds",
                "precopy MiB sent", "precopy_bytes_ratio", "vs stop bytes", "dirty MB/s"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        s, p = r["stop"], r["precopy"]
        table.add_row(str(r["mib"]), str(r["write_mib"]), f"{1000 * s['freeze_seconds']:.1f}",
                      f"{1000 * p['freeze_seconds']:.1f}", f"{r['precopy_freeze_ratio']:.3f}",
                      f"{1000 * s['seconds']:.1f}", f"{1000 * p['seconds']:.1f}",
                      f"{p['rounds']:g}", f"{p['bytes'] / (1 << 20):.1f}",
                      f"{r['precopy_bytes_ratio']:.2f}", f"{r['precopy_vs_stop_bytes']:.2f}",
                      f"{p['dirty_rate_mb_s']:.0f}")
    console = Console(width=200)
    console.print(table)
    for r in result["rows"]:  # what the pre-copy freeze was spent on, largest first
        p = r["precopy"]
        spent = sorted(((p["phases"].get(k, 0.0), k) for k in FREEZE_PHASES), reverse=True)
        console.print(f"{r['mib']} MiB, writing {r['write_mib']}: pre-copy freeze "
                      f"{1000 * p['freeze_seconds']:.1f} ms, "
                      + ", ".join(f"{k} {1000 * v:.1f}" for v, k in spent[:4])
                      + f" ms; {p['freeze_bytes'] / (1 << 20):.2f} MiB sent frozen")
    console.print("targets: " + ", ".join(f"{k} {v}" for k, v in result["targets"].items()))


def main(argv: Sequence[str] | None = None,
         prog: str = "python -m tender_ray.bench.precopy") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Pre-copy's freeze and bytes against stop-and-copy's, for "
                               "the same process, with a still and a writing working set.")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="MiB touched, comma-separated")
    parser.add_argument("--repeats", type=int, default=3,
                        help="moves per mode, size and working set")
    parser.add_argument("--engines", default="emulated",
                        help="engines to measure (comma-separated; default emulated: the "
                             "native engine's write tracking traps every first write)")
    ns = parser.parse_args(argv)
    try:
        sizes = tuple(int(x) for x in ns.sizes.split(","))
    except ValueError:
        parser.error(f"--sizes must be comma-separated MiB, got {ns.sizes!r}")
    if ns.repeats < 1 or not sizes or min(sizes) < 1:
        parser.error("--repeats and every size must be at least 1")
    try:
        engines = usable_engines(ns.engines)
    except UsageError as exc:
        parser.error(str(exc))
    result: dict[str, Any] = {}
    for engine in engines:
        result[engine] = precopy_benchmark(sizes, repeats=ns.repeats, engine=engine)
        print_precopy_table(result[engine])
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
