"""How fast `tender-ray exec` starts a program: `exec /bin/true` on an embedded Ray against a
bare `ray.init` of the same venv (the same arguments exec gives it, then `ray.shutdown`),
measured side by side in one run, rounds alternating which goes first; where exec's seconds
go (its own `exec phases` log line: checks, Ray's start, the machines' start, the program,
the shutdown; the rest is the interpreter and imports); and the same exec joining a running
cluster (`tender-ray up`, one machine).

    tender-ray bench start [--rounds 3] [--program /bin/true] [--json FILE] [--no-cluster]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TIMEOUT = 600.0  # seconds one command may take on a very busy host

# A bare ray.init as exec's embedded Ray is started (cluster/cluster.py), and its shutdown.
BARE = """
import ray, sys
ray.init(namespace="tender_ray", include_dashboard=False, logging_level="ERROR",
         log_to_driver=False, configure_logging=True, address="local", num_cpus=2,
         object_store_memory=256 << 20, _node_ip_address="127.0.0.1",
         _system_config={config})
ray.shutdown()
"""


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)
    return time.perf_counter() - start, done


def _phases(stderr: str) -> dict[str, float]:
    """The `exec phases` record exec logs at info level, as JSON."""
    for line in stderr.splitlines():
        if '"exec phases"' in line:
            record = json.loads(line)
            return {k: float(v) for k, v in record.items()
                    if k not in ("event", "level", "timestamp", "logger")}
    return {}


def _exec(program: str, env: dict[str, str], *options: str
          ) -> tuple[float, dict[str, float]]:
    seconds, done = _timed([sys.executable, "-m", "tender_ray", "--log-level", "info",
                            "--log-format", "json", "exec", *options, program], env)
    if done.returncode != 0:
        raise RuntimeError(f"exec {program} exited {done.returncode}: {done.stderr.strip()}")
    phases = _phases(done.stderr)
    phases["interpreter and imports"] = round(seconds - sum(phases.values()), 4)
    return seconds, phases


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def measure(rounds: int, program: str, cluster: bool) -> dict[str, Any]:
    from tender_ray.cluster.cluster import EMBEDDED_RAY_CONFIG

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    bare_argv = [sys.executable, "-c", BARE.format(config=repr(EMBEDDED_RAY_CONFIG))]
    bare: list[float] = []
    embedded: list[float] = []
    phases: list[dict[str, float]] = []
    for i in range(rounds):
        for which in (("bare", "exec") if i % 2 == 0 else ("exec", "bare")):
            if which == "bare":
                seconds, done = _timed(bare_argv, env)
                if done.returncode != 0:
                    raise RuntimeError(f"bare ray.init failed: {done.stderr.strip()}")
                bare.append(seconds)
            else:
                seconds, ph = _exec(program, env)
                embedded.append(seconds)
                phases.append(ph)
            print(f"  round {i + 1}: {which} {seconds:.2f} s", file=sys.stderr)
    ratios = [e / b for e, b in zip(embedded, bare, strict=True)]
    result: dict[str, Any] = {
        "program": program, "rounds": rounds,
        "bare_ray_init_seconds": [round(s, 3) for s in bare],
        "exec_embedded_seconds": [round(s, 3) for s in embedded],
        "exec_over_bare": round(statistics.median(ratios), 3),
        "exec_embedded_phases": _median_phases(phases),
    }
    if cluster:
        result.update(_on_a_cluster(rounds, program, env))
    return result


def _on_a_cluster(rounds: int, program: str, env: dict[str, str]) -> dict[str, Any]:
    """exec --address auto on a cluster of `tender-ray up` (its own Ray head, one machine)."""
    with tempfile.TemporaryDirectory(prefix="tender-bench-start-") as tmp:
        env = {**env, "TENDER_STATE": str(Path(tmp) / "cluster.json")}
        up_seconds, up = _timed([sys.executable, "-m", "tender_ray", "up", "--machines", "1",
                                 "--num-cpus", "2", "--no-metrics"], env)
        if up.returncode != 0:
            raise RuntimeError(f"up failed: {up.stderr.strip()}")
        try:
            joined: list[float] = []
            phases: list[dict[str, float]] = []
            for i in range(rounds):
                seconds, ph = _exec(program, env, "--address", "auto")
                joined.append(seconds)
                phases.append(ph)
                print(f"  round {i + 1}: exec --address auto {seconds:.2f} s", file=sys.stderr)
        finally:
            down_seconds, _ = _timed([sys.executable, "-m", "tender_ray", "down"], env)
    median = _median_phases(phases)
    # From the command to the program's start: everything before it runs, run by run.
    to_start = statistics.median(s - ph.get("program", 0.0) - ph.get("shutdown", 0.0)
                                 for s, ph in zip(joined, phases, strict=True))
    return {"up_seconds": round(up_seconds, 3), "down_seconds": round(down_seconds, 3),
            "exec_on_cluster_seconds": [round(s, 3) for s in joined],
            "exec_on_cluster_phases": median,
            "exec_on_cluster_to_program_start_seconds": round(to_start, 3)}


def report(result: dict[str, Any]) -> str:
    lines = [f"exec {result['program']} on an embedded Ray vs a bare ray.init "
             f"({result['rounds']} rounds, alternating):",
             f"  bare ray.init + shutdown  median "
             f"{statistics.median(result['bare_ray_init_seconds']):.2f} s",
             f"  tender-ray exec           median "
             f"{statistics.median(result['exec_embedded_seconds']):.2f} s",
             f"  exec / bare (median of rounds)  {result['exec_over_bare']:.2f}",
             "  exec's phases (median s): " + ", ".join(
                 f"{k} {v:.2f}" for k, v in result["exec_embedded_phases"].items())]
    if "exec_on_cluster_seconds" in result:
        lines += [f"on a running cluster (`up`: {result['up_seconds']:.1f} s, `down`: "
                  f"{result['down_seconds']:.1f} s):",
                  f"  exec --address auto       median "
                  f"{statistics.median(result['exec_on_cluster_seconds']):.2f} s, program "
                  f"started after {result['exec_on_cluster_to_program_start_seconds']:.2f} s",
                  "  its phases (median s): " + ", ".join(
                      f"{k} {v:.2f}" for k, v in result["exec_on_cluster_phases"].items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "tender-ray bench start") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="rounds of each measurement (default 3)")
    parser.add_argument("--program", default="/bin/true", metavar="PROGRAM",
                        help="the program exec runs (default /bin/true)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip the part on a running cluster (`up`, exec --address auto)")
    ns = parser.parse_args(argv)
    if ns.rounds < 1:
        print(f"{prog}: error: --rounds must be at least 1", file=sys.stderr)
        return 2
    result = measure(ns.rounds, ns.program, not ns.no_cluster)
    print(report(result))
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
