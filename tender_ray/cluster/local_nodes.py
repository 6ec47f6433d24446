"""Ray nodes that are real capacity on one host: each node is a `ray start --block` run as a
subprocess in a session of its own, pinned to its own cores once it has joined (every thread
of its raylet and agents; the workers and programs they start later inherit the pinning),
offering `num_cpus` CPUs and a custom resource of its own. Adding a node adds its cores to the
cluster; killing its session (SIGKILL to every process of it, the way a preempted machine
vanishes) takes them away. Only what was started here is stopped, by its session; a head is
started here too unless the nodes join an existing cluster (`address`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from tender_ray.cluster.drain_watch import request_drain
from tender_ray.errors import MachineError, UsageError

JOIN_TIMEOUT = 90.0  # seconds a node may take to start and join
STARTS = 3  # times a node's start is tried
STOP_PATIENCE = 15.0  # seconds a node stopped with SIGTERM may take before SIGKILL
NODE_PREFIX = "vs_node_"  # the custom resource of node NAME: vs_node_NAME_<k>


def _ray_command() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        raise UsageError("the `ray` command is not installed next to this Python")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment() -> dict[str, str]:
    # Every process of one cluster must agree on authentication; drivers here run without a
    # token unless the user set RAY_AUTH_MODE, so the nodes do the same.
    # A raylet waits this long for its node's agents to say their ports; with Ray's default
    # it gave up after about 8 s on a busy host (their Python start-up is slow) and died.
    # On SIGTERM a `ray start --block` node first drains itself for up to Ray's 30 s
    # (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S); a node stopped here has nothing left to drain
    # (and a killed one must not be drained), so it stops at once.
    return {"RAY_agent_register_timeout_ms": "25000",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **os.environ,
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}


def _session(sid: int) -> list[int]:
    """The processes of session `sid`: a node's `ray start` and everything it started (Ray
    gives each worker a process group of its own, but not a session)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
                members.append(int(entry))
    return members


def _signal_session(sid: int, sig: int) -> None:
    for pid in _session(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_session(sid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(sid, signal.SIGTERM)  # `ray start --block` stops its node's processes
    deadline = time.monotonic() + STOP_PATIENCE
    while time.monotonic() < deadline and _session(sid):
        time.sleep(0.1)
    _signal_session(sid, signal.SIGKILL)


def _pin(sid: int, cores: tuple[int, ...]) -> None:
    """Pin every thread of every process of session `sid` to `cores`; what they start
    later inherits it."""
    for pid in _session(sid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cores)


@dataclass
class LocalNode:
    """A node started here: its name, its `ray start` process (the leader of its process
    group), the cores it is pinned to, and its Ray node id once it joined."""

    name: str
    process: subprocess.Popen[bytes]
    cores: tuple[int, ...]
    # Its own custom resource, new for each start: a node killed a moment ago is still
    # listed alive (until its missed heartbeats are noticed) under the resource it had.
    resource: str
    node_id: str = ""
    joined_at: float = 0.0  # wall seconds


class LocalNodes:
    """Nodes started on this host for one cluster: a head with no CPUs (unless `address`
    names a cluster to join), then nodes added and killed by name."""

    def __init__(self, address: str | None = None, *, object_store_mib: int = 128,
                 shared_resource: str = "vs_bench") -> None:
        self._ray = _ray_command()
        self._store = object_store_mib << 20
        # Every node offers it: what the benchmark's Ray tasks ask a sliver of, so that they
        # run only on these nodes (never on the head, nor on others of a joined cluster).
        self.shared_resource = shared_resource
        self._logs = Path(tempfile.mkdtemp(prefix="tender-nodes-"))
        self._head: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, LocalNode] = {}
        self._started = 0  # nodes started so far
        self.failed = False  # a node failed to start: its log is kept
        self.local = address is None
        if address is None:
            port = _free_port()
            self._head = self._spawn("head", [
                "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"])
            address = f"127.0.0.1:{port}"
            deadline = time.monotonic() + JOIN_TIMEOUT
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), 1):
                    break
                if self._head.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise MachineError(f"the Ray head did not start; see {self._logs}/head.log")
                time.sleep(0.2)
        self.address = address

    def connect(self) -> None:
        """Join this process to the cluster as its driver (what `close` ends)."""
        if ray.is_initialized():
            raise UsageError("this process is connected to a Ray already; run alone")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as the nodes started here
        ray.init(address=self.address, namespace="tender_ray", log_to_driver=False,
                 logging_level=logging.ERROR)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        command = [self._ray, "start", "--block", "--disable-usage-stats",
                   f"--object-store-memory={self._store}", *args]
        if self.local:
            command.append("--node-ip-address=127.0.0.1")
        with open(self._logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=_environment())

    def start(self, name: str, cores: tuple[int, ...], num_cpus: int = 1) -> LocalNode:
        """Start node `name` pinned to `cores`, without waiting for it to join."""
        if name in self.nodes:
            raise UsageError(f"node {name!r} is running already")
        self._started += 1
        resource = f"{NODE_PREFIX}{name}_{self._started}"
        resources = {resource: 1, self.shared_resource: 1000}
        # Ports of its own: nodes starting at once on one host otherwise race for the same
        # free ones (and a raylet that loses dies at start).
        ports = [f"--{option}={_free_port()}" for option in (
            "node-manager-port", "object-manager-port", "metrics-export-port",
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port")]
        process = self._spawn(name, [f"--address={self.address}", f"--num-cpus={num_cpus}",
                                     f"--resources={json.dumps(resources)}", *ports])
        node = self.nodes[name] = LocalNode(name, process, cores, resource)
        return node

    def wait_joined(self, *names: str) -> None:
        """Wait until the nodes `names` are alive members of the cluster (the driver must be
        connected)."""
        deadline = time.monotonic() + JOIN_TIMEOUT
        waiting = {n: self.nodes[n] for n in names}
        while waiting:
            for n in ray.nodes():
                for name, node in list(waiting.items()):
                    if n.get("Alive") and node.resource in n.get("Resources", {}):
                        # Pinned once it runs: a node starting on one busy core can miss
                        # Ray's start-up timeouts. Its workers start after this, pinned.
                        _pin(node.process.pid, node.cores)
                        node.node_id, node.joined_at = n["NodeID"], time.time()
                        del waiting[name]
            for name, node in waiting.items():
                if node.process.poll() is not None or time.monotonic() > deadline:
                    raise MachineError(f"node {name} did not join the Ray cluster at "
                                       f"{self.address}; see {self._logs}/{name}.log")
            time.sleep(0.1)

    def add(self, name: str, cores: tuple[int, ...], num_cpus: int = 1) -> LocalNode:
        """Start node `name` and wait until it has joined."""
        self.add_all({name: cores}, num_cpus)
        return self.nodes[name]

    def add_all(self, cores: dict[str, tuple[int, ...]], num_cpus: int = 1) -> None:
        """Start a node of each name (pinned to its `cores`) and wait until it has joined,
        one at a time (raylets starting together on one host still raced for a port, even
        with ports of their own); a start that failed is tried again, up to `STARTS` times
        (on a busy host Ray's own start-up can time out)."""
        for name, pinned in cores.items():
            for tries_left in reversed(range(STARTS)):
                self.start(name, pinned, num_cpus)
                try:
                    self.wait_joined(name)
                    break
                except MachineError:
                    self.failed = True
                    self.kill(name)
                    if not tries_left:
                        raise

    def drain(self, name: str, deadline_at: float, why: str) -> None:
        """Ray's preemption notice for node `name`: DRAINING, to be removed at `deadline_at`."""
        request_drain(self.nodes[name].node_id, deadline_at, why)

    def kill(self, name: str) -> None:
        """Remove node `name` as a preemption does: every process of it killed at once."""
        node = self.nodes.pop(name)
        _signal_session(node.process.pid, signal.SIGKILL)
        node.process.wait()

    def stop(self, name: str) -> None:
        """Stop node `name`: SIGTERM to its process group, SIGKILL to what is left."""
        node = self.nodes.pop(name)
        _stop_session(node.process.pid)
        node.process.wait()
        # Its raylet said goodbye: the control store lists it dead at once, and nothing is
        # placed on it meanwhile (a killed node is noticed only after missed heartbeats).
        deadline = time.monotonic() + STOP_PATIENCE
        while time.monotonic() < deadline and ray.is_initialized() and any(
                n["NodeID"] == node.node_id and n.get("Alive") for n in ray.nodes()):
            time.sleep(0.1)

    def close(self) -> None:
        """Disconnect, then stop every node started here, and the head if it was started
        here."""
        if ray.is_initialized():
            ray.shutdown()
        for name in list(self.nodes):
            self.kill(name)  # no drain of their own: the run is over
        if self._head is not None:
            _stop_session(self._head.pid)
            self._head.wait()
            self._head = None
        if not self.failed:  # else kept: the message that said so names them
            shutil.rmtree(self._logs, ignore_errors=True)
