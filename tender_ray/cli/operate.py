"""Operating a long-lived cluster: `tender-ray up`, the commands that act on it, and `down`.

`up` starts machines as named detached actors (and, without `--address`, a Ray head of its
own) and writes what it started to a state file; the other commands read it to find the
cluster; `down` stops only what `up` started: the actors by handle, the Ray head by the process
group it was started in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tender_ray.errors import UsageError

if TYPE_CHECKING:  # loaded with Ray, only by the commands that reach a cluster
    from tender_ray.cluster.cluster import Cluster
    from tender_ray.migration.options import MigrationMode


def state_path() -> Path:
    return Path(os.environ.get("TENDER_STATE", Path.home() / ".tender_ray" / "cluster.json"))


@dataclass
class ClusterState:
    """What `up` started, for the commands that follow and for `down`."""

    address: str
    machines: dict[str, int]  # name -> index (pid base)
    shared_plate: str
    head_pid: int | None = None  # the Ray head we started (its process group), if any
    metrics_port: int | None = None
    started_at: float = field(default_factory=time.time)
    exec_server_pid: int | None = None  # the exec server (cli/exec_server.py), if it runs
    exec_socket: str | None = None  # ... and the Unix socket it listens on

    def save(self) -> None:
        path = state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load() -> ClusterState:
        path = state_path()
        if not path.is_file():
            raise UsageError(f"no running cluster: {path} does not exist; start one with "
                             "`tender-ray up`")
        try:
            return ClusterState(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path} is not a tender-ray cluster state file ({exc}); "
                             "remove it and run `tender-ray up`") from None

    @staticmethod
    def remove() -> None:
        state_path().unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_head(num_cpus: int, object_store_mib: int) -> tuple[str, int]:
    """Start a Ray head on 127.0.0.1 in a process group of its own; (address, pid)."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        raise UsageError("the `ray` command is not installed next to this Python")
    port = _free_port()
    log = state_path().parent / "ray-head.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", f"--port={port}",
             "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
             f"--object-store-memory={object_store_mib << 20}", "--include-dashboard=false",
             "--disable-usage-stats"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            # Head and drivers must agree on authentication; drivers here run without a
            # token unless the user set RAY_AUTH_MODE, so the head does the same. On
            # SIGTERM (`down`) a head drains itself for up to Ray's 30 s first; `down` has
            # stopped the machines already, so there is nothing to drain: it stops at once.
            env={"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **os.environ,
                 "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"the Ray head did not start (exit {proc.returncode}); see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return address, proc.pid
        time.sleep(0.25)
    stop_head(proc.pid)
    raise UsageError(f"the Ray head did not listen on {address} within 60 s; see {log}")


def stop_head(pid: int) -> None:
    """Stop the Ray head `up` started: its whole process group, which only it created."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def connect(state: ClusterState | None = None, *, exporter: bool = True
            ) -> tuple[Cluster, ClusterState]:
    """A Cluster attached to the machines `up` started (and its metrics exporter, which
    only `down` needs: it stops it)."""
    from tender_ray.cli.status import UnreachableError, check_reachable
    from tender_ray.cluster.cluster import Cluster

    state = state or ClusterState.load()
    try:
        check_reachable(state.address)
        cluster = Cluster(state.address, shared_plate=state.shared_plate)
    except (ConnectionError, UnreachableError):  # nobody answers there any more
        raise UnreachableError(
            f"no Ray cluster answers at {state.address}, where `tender-ray up` started one "
            f"({state_path()}): it has stopped; `tender-ray down` forgets it, then "
            "`tender-ray up` starts a new one") from None
    cluster.attach(state.machines)
    if exporter:
        cluster.attach_exporter()  # so `down` stops it too
    return cluster, state


def find_process(cluster: Cluster, pid: int) -> str:
    """The machine a process is on now."""
    return str(cluster.locate(pid).name)


def resolve_auto() -> str:
    """What `--address auto` means: the cluster `tender-ray up` started (its state file), or
    else $RAY_ADDRESS; which one is said on stderr. Never a guess: another Ray running on
    this host (an embedded one rewrites Ray's own "current cluster" file) is not joined."""
    from tender_ray.cli.status import UnreachableError

    if state_path().is_file():
        state = ClusterState.load()
        print(f"tender-ray: --address auto: joining the cluster `tender-ray up` started, at "
              f"{state.address} ({state_path()})", file=sys.stderr)
        return state.address
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env != "auto":
        print(f"tender-ray: --address auto: joining RAY_ADDRESS={env}", file=sys.stderr)
        return env
    raise UnreachableError(f"--address auto: no cluster of `tender-ray up` ({state_path()} "
                           "does not exist) and RAY_ADDRESS is not set: start one with "
                           "`tender-ray up`, or give --address HOST:PORT")


def parse_migration_mode(text: str) -> MigrationMode:
    """`migrate --mode` and `exec --migrate-mode`: stop, precopy or auto (an argparse type:
    anything else, postcopy included, is a usage error naming what is offered)."""
    import argparse

    from tender_ray.migration.options import migration_mode

    try:
        return migration_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SIGNAL_COUNT = 64  # Linux's signals: 1-31, and the real-time ones up to 64


def parse_signal(text: str) -> int:
    """A signal by number (0-64; 0 only asks whether the process exists) or by name (TERM,
    SIGTERM, term), as kill(1) takes it."""
    from tender_ray.abi.linux import Signal

    word = text.strip()
    if word.isdigit() and int(word) <= SIGNAL_COUNT:
        return int(word)
    name = word.upper()
    try:
        return int(Signal[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise UsageError(f"--signal {text}: not a signal; give a number (0-{SIGNAL_COUNT}) or "
                         "a name such as TERM, INT, HUP, KILL, USR1") from None
