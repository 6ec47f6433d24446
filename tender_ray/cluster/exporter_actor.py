"""The metrics exporter actor: one actor polls every machine (and the balancer, or the drain
watcher when no balancer runs) and serves all their metrics on one Prometheus endpoint, so
machine actors never start HTTP servers of their own (several on one port collide). See
`tender_ray.metrics.collector`."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import ray

from tender_ray import logs
from tender_ray.balancing.state import BalancerState
from tender_ray.cluster.drain_watch import DrainWatchHandle
from tender_ray.cluster.handles import BalancerHandle, MachineHandle, Pending
from tender_ray.errors import TenderError, UsageError
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.metrics.collector import MetricsServer
from tender_ray.metrics.node_drains import NodeDrainView
from tender_ray.migration.record import MigrationRecord

EXPORTER_NAME = "tender-exporter"  # actor name (after the cluster prefix) when detached
# The exporter polls the machines when scraped (unless its last poll is younger than
# EXPORT_FRESH), and on its own every EXPORT_INTERVAL, often enough that no migration record
# falls out of a machine's recent list between two polls. Unscraped, it costs the machines
# little of their processors.
EXPORT_INTERVAL = 5.0
EXPORT_FRESH = 1.0
EXPORT_TIMEOUT = 5.0  # seconds a machine may take to answer a poll


class ExporterActor:
    """The actor body: a `_Poller` and the server it feeds, one method per remote operation;
    callers reach it through `ExporterHandle`."""

    def __init__(self, machines: list[MachineHandle], balancer: BalancerHandle | None,
                 interval: float = EXPORT_INTERVAL, prefix: str = "") -> None:
        logs.configure()
        # Nothing private is a method here: Ray lets a caller reach every method of an actor
        # class, so the polling lives in `_Poller`.
        self._poller = _Poller(machines, balancer, interval, prefix)

    def start(self, port: int, host: str) -> int:
        """Serve on host:port (0: a free port) and start polling; the port bound."""
        return self._poller.start(port, host)

    def add_machine(self, handle: MachineHandle) -> None:
        self._poller.add_machine(handle)

    def remove_machine(self, name: str) -> None:
        self._poller.remove_machine(name)

    def set_balancer(self, balancer: BalancerHandle | None) -> None:
        self._poller.set_balancer(balancer)

    def port(self) -> int:
        return self._poller.server.port

    def stop(self) -> None:
        self._poller.stop()


class _Poller:
    """Polls statistics, processes and migration records of every machine, the balancer's
    state and the drain watcher's node drains into a `MetricsServer` it serves on one port."""

    def __init__(self, machines: list[MachineHandle], balancer: BalancerHandle | None,
                 interval: float, prefix: str = "") -> None:
        self._log = logs.get("exporter")
        self._lock = threading.Lock()
        self._handles = {h.name: h for h in machines}
        self._balancer = balancer
        self._last_balancer: BalancerState | None = None
        # The cluster's drain watcher (actor name: prefix + its name), looked up at the polls
        # while none is known: it starts with the second node's machine and stops when a
        # balancer starts, neither of which the exporter is told of.
        self._prefix = prefix
        self._drain_watch: DrainWatchHandle | None = None
        self._interval = interval
        self.server = MetricsServer()
        self.server.collector.refresh = self._refresh
        self._poll_lock = threading.Lock()  # one poll at a time (scrapes, the loop)
        self._polled_at = 0.0  # monotonic time of the last poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str) -> int:
        try:
            bound = self.server.start(port, host)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {host}:{port}: "
                             f"{exc.strerror or exc}") from None
        self._poll()  # the first scrape already has every machine
        self._thread = threading.Thread(target=self._loop, daemon=True, name="exporter")
        self._thread.start()
        self._log.info("serving metrics", url=self.server.url)
        return bound

    def add_machine(self, handle: MachineHandle) -> None:
        with self._lock:
            self._handles[handle.name] = handle

    def remove_machine(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)

    def set_balancer(self, balancer: BalancerHandle | None) -> None:
        with self._lock:
            self._balancer = balancer

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._poll()
            except Exception as exc:  # the exporter must outlive a bad poll
                self._log.warning("poll failed", error=repr(exc))

    def _refresh(self) -> None:
        """Before a scrape: poll, unless a poll is younger than EXPORT_FRESH."""
        self._poll(EXPORT_FRESH)

    def _poll(self, fresh: float = 0.0) -> None:
        with self._poll_lock:
            if time.monotonic() - self._polled_at < fresh:  # polled while we waited
                return
            self._polled_at = time.monotonic()
            self._poll_locked()

    def _poll_locked(self) -> None:
        start = time.perf_counter()
        with self._lock:
            handles, balancer = dict(self._handles), self._balancer
        # Every question to every machine at once, then the answers: one round trip in all.
        pending = {name: (h.load_async(), h.recent_migrations_async())
                   for name, h in handles.items()}
        balancer_state: Pending[BalancerState] | None = (
            balancer.state_async() if balancer is not None else None)
        if self._drain_watch is None and balancer is None:
            self._drain_watch = DrainWatchHandle.find(self._prefix)
        watched: Pending[NodeDrainView] | None = None
        if self._drain_watch is not None:
            try:
                watched = self._drain_watch.status_async()
            except Exception:  # a handle to an actor that is gone
                self._drain_watch = None
        stats: dict[str, MachineStatistics] = {}
        processes: dict[str, list[ProcessInfo]] = {}
        records: dict[str, list[MigrationRecord]] = {}
        down: list[str] = []
        for name, (load, recent) in pending.items():
            try:
                stats[name], processes[name] = load.result(EXPORT_TIMEOUT)
                records[name] = recent.result(EXPORT_TIMEOUT)
            except TenderError:
                stats.pop(name, None)
                processes.pop(name, None)
                down.append(name)
        if balancer_state is not None:
            with contextlib.suppress(Exception):  # a stopped balancer keeps its last state
                self._last_balancer = balancer_state.result(EXPORT_TIMEOUT)
        node_drains: NodeDrainView | None = None
        if watched is not None:
            try:
                node_drains = watched.result(EXPORT_TIMEOUT)
            except TenderError:  # stopped (a balancer took over): its last drains stay
                self._drain_watch = None
        self.server.update(stats, processes=processes, migrations=records,
                           balancer=self._last_balancer, node_drains=node_drains, down=down,
                           poll_seconds=time.perf_counter() - start)


RemoteExporter: Any = ray.remote(ExporterActor)
