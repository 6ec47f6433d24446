"""How fast `tender-ray exec` starts a program: `exec /bin/true` on an embedded Ray against a
bare `ray.init` of the same venv (the same arguments exec gives it, then `ray.shutdown`),
measured side by side in one run, rounds alternating which goes first; where exec's seconds
go (its own `exec phases` log line: checks, Ray's start, what exec still loaded once Ray ran,
the machines' start, the program, the shutdown; the rest is the interpreter and the imports
before Ray's start); and on a running cluster (`tender-ray up`, one machine) the same exec
through the exec server's warm driver, without it, and the program natively, side by side.

    tender-ray bench start [--rounds 3] [--program /bin/true] [--json FILE] [--no-cluster]
                           [--no-embedded]
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


def _phases(stderr: str, event: str = "exec phases") -> dict[str, float]:
    """The `exec phases` record exec logs at info level, as JSON (or another such record:
    `exec client phases`, what a client of the exec server logs)."""
    for line in stderr.splitlines():
        if f'"{event}"' in line:
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


def measure(rounds: int, program: str, cluster: bool, embedded: bool = True
            ) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result: dict[str, Any] = {"program": program, "rounds": rounds}
    if embedded:
        result.update(_embedded(rounds, program, env))
    if cluster:
        result.update(_on_a_cluster(rounds, program, env))
    return result


def _embedded(rounds: int, program: str, env: dict[str, str]) -> dict[str, Any]:
    """exec on an embedded Ray against a bare ray.init, rounds alternating which goes first."""
    from tender_ray.cluster.embedded import EMBEDDED_RAY_CONFIG

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
    return {"bare_ray_init_seconds": [round(s, 3) for s in bare],
            "exec_embedded_seconds": [round(s, 3) for s in embedded],
            "exec_over_bare": round(statistics.median(ratios), 3),
            "exec_embedded_phases": _median_phases(phases)}


def _served(program: str, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """exec --address auto through the exec server's warm driver: the wall time, and where it
    went: the client's start (interpreter, imports), the hand-over to the driver, exec's own
    steps in the driver (its `exec phases`), the status coming back, the client's exit."""
    seconds, done = _timed([sys.executable, "-m", "tender_ray", "--log-level", "info",
                            "--log-format", "json", "exec", "--address", "auto", program], env)
    if done.returncode != 0:
        raise RuntimeError(f"exec {program} exited {done.returncode}: {done.stderr.strip()}")
    client = _phases(done.stderr, "exec client phases")
    if not client:
        raise RuntimeError(f"exec {program} did not go through the exec server: "
                           f"{done.stderr.strip()}")
    driver = _phases(done.stderr)
    steps = driver.get("check", 0.0) + driver.get("ray", 0.0) + driver.get("machines", 0.0)
    phases = {"client start": client["start"], "hand-over": client["handover"],
              "exec's checks": steps, "program": driver.get("program", 0.0),
              "driver's end": driver.get("shutdown", 0.0)}
    phases["status back"] = round(client["run"] - steps - phases["program"]
                                  - phases["driver's end"], 4)
    phases["client exit"] = round(seconds - client["start"] - client["handover"]
                                  - client["run"], 4)
    # What the client's start costs on an idle host: its own CPU seconds until it connected.
    phases["client start, its CPU"] = client.get("start_cpu", 0.0)
    return seconds, phases


WARM_PATIENCE = 600.0  # seconds a warm driver may take to be ready on a very busy host


def _wait_warm(socket_file: Path) -> None:
    from tender_ray.cli.exec_server import query

    deadline = time.monotonic() + WARM_PATIENCE
    while (said := query(socket_file)) != "warm":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the exec server has no warm driver: {said}")
        time.sleep(0.1)


def _on_a_cluster(rounds: int, program: str, env: dict[str, str]) -> dict[str, Any]:
    """On a cluster of `tender-ray up` (its own Ray head, one machine): exec --address auto
    through the exec server (its driver warm, as between a user's commands), the same exec
    without it (TENDER_EXEC_SERVER=off: a fresh driver imports Ray and joins), and `program`
    run natively; each round in turn, the order rotating."""
    from tender_ray.cli.exec_server import socket_path

    with tempfile.TemporaryDirectory(prefix="tender-bench-start-") as tmp:
        state = Path(tmp) / "cluster.json"
        env = {**env, "TENDER_STATE": str(state)}
        up_seconds, up = _timed([sys.executable, "-m", "tender_ray", "up", "--machines", "1",
                                 "--num-cpus", "2", "--no-metrics"], env)
        if up.returncode != 0:
            raise RuntimeError(f"up failed: {up.stderr.strip()}")
        runs: dict[str, list[float]] = {"served": [], "quiet": [], "unserved": [],
                                        "native": []}
        phases: dict[str, list[dict[str, float]]] = {"served": [], "unserved": []}
        try:
            for i in range(rounds):
                order = ["served", "quiet", "unserved", "native"]
                order = order[i % 4:] + order[:i % 4]
                for which in order:
                    if which == "served":
                        _wait_warm(socket_path(state))
                        seconds, ph = _served(program, env)
                    elif which == "quiet":  # the same without the log lines that tell phases
                        _wait_warm(socket_path(state))
                        seconds, done = _timed([sys.executable, "-m", "tender_ray", "exec",
                                                "--address", "auto", program], env)
                        ph = {}
                        if done.returncode != 0:
                            raise RuntimeError(f"exec {program} exited {done.returncode}: "
                                               f"{done.stderr.strip()}")
                    elif which == "unserved":
                        seconds, ph = _exec(program, {**env, "TENDER_EXEC_SERVER": "off"},
                                            "--address", "auto")
                    else:
                        seconds, done = _timed([program], env)
                        ph = {}
                        if done.returncode != 0:
                            raise RuntimeError(f"{program} exited {done.returncode}")
                    runs[which].append(seconds)
                    if which in phases:
                        phases[which].append(ph)
                    print(f"  round {i + 1}: {which} {seconds:.3f} s", file=sys.stderr)
        finally:
            down_seconds, _ = _timed([sys.executable, "-m", "tender_ray", "down"], env)
    # From the command to the program's start: everything before it runs, run by run.
    to_start = statistics.median(s - ph.get("program", 0.0) - ph.get("shutdown", 0.0)
                                 for s, ph in zip(runs["unserved"], phases["unserved"],
                                                  strict=True))
    return {"up_seconds": round(up_seconds, 3), "down_seconds": round(down_seconds, 3),
            "exec_served_seconds": [round(s, 3) for s in runs["served"]],
            "exec_served_phases": _median_phases(phases["served"]),
            "exec_served_quiet_seconds": [round(s, 3) for s in runs["quiet"]],
            "exec_on_cluster_seconds": [round(s, 3) for s in runs["unserved"]],
            "exec_on_cluster_phases": _median_phases(phases["unserved"]),
            "exec_on_cluster_to_program_start_seconds": round(to_start, 3),
            "native_seconds": [round(s, 4) for s in runs["native"]]}


def report(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if "exec_embedded_seconds" in result:
        lines += [f"exec {result['program']} on an embedded Ray vs a bare ray.init "
                  f"({result['rounds']} rounds, alternating):",
                  f"  bare ray.init + shutdown  median "
                  f"{statistics.median(result['bare_ray_init_seconds']):.2f} s",
                  f"  tender-ray exec           median "
                  f"{statistics.median(result['exec_embedded_seconds']):.2f} s",
                  f"  exec / bare (median of rounds)  {result['exec_over_bare']:.2f}",
                  "  exec's phases (median s): " + ", ".join(
                      f"{k} {v:.2f}" for k, v in result["exec_embedded_phases"].items())]
    if "exec_on_cluster_seconds" in result:
        served = statistics.median(result["exec_served_seconds"])
        native = statistics.median(result["native_seconds"])
        lines += [f"on a running cluster (`up`: {result['up_seconds']:.1f} s, `down`: "
                  f"{result['down_seconds']:.1f} s), {result['rounds']} rounds, the order "
                  "rotating:",
                  f"  exec --address auto, exec server   median {served:.3f} s",
                  "    where it went (median s): " + ", ".join(
                      f"{k} {v:.3f}" for k, v in result["exec_served_phases"].items()),
                  f"  the same without its log lines     median "
                  f"{statistics.median(result['exec_served_quiet_seconds']):.3f} s",
                  f"  exec --address auto, no server     median "
                  f"{statistics.median(result['exec_on_cluster_seconds']):.3f} s, program "
                  f"started after {result['exec_on_cluster_to_program_start_seconds']:.2f} s",
                  "    where it went (median s): " + ", ".join(
                      f"{k} {v:.3f}" for k, v in result["exec_on_cluster_phases"].items()),
                  f"  {result['program']} natively       median {native:.4f} s"]
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
    parser.add_argument("--no-embedded", action="store_true",
                        help="skip the part on an embedded Ray (exec against a bare ray.init)")
    ns = parser.parse_args(argv)
    if ns.rounds < 1:
        print(f"{prog}: error: --rounds must be at least 1", file=sys.stderr)
        return 2
    result = measure(ns.rounds, ns.program, not ns.no_cluster, not ns.no_embedded)
    print(report(result))
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
