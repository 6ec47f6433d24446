"""Following the cluster manager's drain of a node (Ray's DRAINING state, a preemption notice)
with its deadline: the machines on a draining node are cordoned, their processes moved to
machines on other nodes before the deadline (largest first, each only if the measured
migration speed says it can arrive in time), what cannot move in time is checkpointed where the
machine can, and the machines are uncordoned when the drain is cancelled (the node leaves the
draining set while its machines still answer).

Plain Python over the `DrainingNodes`, `MachineClient` and `Clock` protocols: the balancing loop
runs it in its rounds, the Ray layer's drain watcher (`cluster/drain_watch.py`) runs it alone
when no balancer runs, and tests drive it with fake nodes and a fake clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tender_ray import logs
from tender_ray.balancing.client import (
    Clock,
    DrainingNodes,
    Load,
    MachineClient,
    Pending,
    SystemClock,
)
from tender_ray.balancing.policies import (
    HEADROOM,
    Balancer,
    BalancerParams,
    MachineLoad,
    ProcessLoad,
    snapshot,
)
from tender_ray.balancing.state import DrainReport
from tender_ray.errors import TenderError
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord

NO_DEADLINE = math.inf  # a drain announced without a deadline (Ray's 0)
MARGIN = 0.25  # seconds kept free before a deadline: a move predicted to end later waits


def machine_loads(clients: Iterable[MachineClient], clock: Clock,
                  timeout: float) -> list[MachineLoad]:
    """One look at each machine of `clients`, the balancing loop's and the evacuation's: a
    machine that is gone or does not answer within `timeout` seconds is left out (it is not a
    place to move processes to or from)."""
    # Asked of every machine at once, then collected: one round trip, not one each.
    pending: list[Pending[Load]] = []
    for client in clients:
        with contextlib.suppress(TenderError):
            pending.append(client.load_async())
    now = clock.time()
    loads = []
    for reply in pending:
        with contextlib.suppress(TenderError):
            loads.append(snapshot(*reply.result(timeout), now))
    return loads


@dataclass(frozen=True)
class NodeDrainStatus:
    """One node's drain as the watcher follows it."""

    node: str
    deadline_at: float  # wall-clock seconds the node will be taken away (inf: not said)
    machines: tuple[str, ...]  # ours on it, cordoned


class NodeDrains:
    """The drain watcher's logic: `check` looks at the draining nodes once and acts on what
    changed; `reports` is the record of every machine's drain, `signal_errors` how often the
    draining nodes could not be read."""

    def __init__(self, nodes: DrainingNodes, *, options: MigrationOptions | None = None,
                 clock: Clock | None = None, balancer: Balancer | None = None,
                 call_timeout: float = 30.0,
                 on_move: Callable[[MigrationRecord], None] | None = None) -> None:
        self._log = logs.get("drain-watch")
        self._nodes = nodes
        self._options = options or MigrationOptions()
        self._clock: Clock = clock or SystemClock()
        # Shared with the balancing loop when one runs, so both learn the migration speed.
        self._balancer = balancer or Balancer(BalancerParams())
        self._call_timeout = call_timeout
        self._on_move = on_move  # the balancing loop records the moves as its own too
        self._lock = threading.Lock()  # guards the fields below (calls vs the watcher thread)
        self._clients: dict[str, MachineClient] = {}
        self._machine_nodes: dict[str, str] = {}  # machine -> the node it runs on
        self._active: dict[str, NodeDrainStatus] = {}  # node -> its drain under way
        self._reports: list[DrainReport] = []
        self.signal_errors = 0  # times the draining nodes could not be read (logged each)

    # --- machines -------------------------------------------------------------------------

    def add_machine(self, client: MachineClient, node: str) -> None:
        with self._lock:
            self._clients[client.name] = client
            self._machine_nodes[client.name] = node

    def remove_machine(self, name: str) -> None:
        with self._lock:
            self._clients.pop(name, None)
            self._machine_nodes.pop(name, None)

    @property
    def reports(self) -> tuple[DrainReport, ...]:
        with self._lock:
            return tuple(self._reports)

    @property
    def draining(self) -> tuple[NodeDrainStatus, ...]:
        with self._lock:
            return tuple(self._active.values())

    # --- one look -------------------------------------------------------------------------

    def read(self) -> dict[str, float] | None:
        """The draining nodes and their deadlines (wall seconds), or None when they could not
        be read (logged and counted: a watcher that cannot see drains must say so)."""
        try:
            got = self._nodes.draining()
        except Exception as exc:  # whatever the cluster manager raised: count it, go on
            self.signal_errors += 1
            self._log.warning("draining nodes unreadable", error=repr(exc),
                              errors=self.signal_errors)
            return None
        if isinstance(got, Mapping):
            return {str(n): float(d) for n, d in got.items()}
        return {str(n): NO_DEADLINE for n in got}  # a set of nodes: no deadline known

    def check(self) -> list[DrainReport]:
        """Act on the draining nodes once: cordon the machines of a node newly draining and
        evacuate them; uncordon those of a node whose drain was cancelled. The reports of the
        drains that ended in this look."""
        draining = self.read()
        if draining is None:
            return []
        with self._lock:
            placed = dict(self._machine_nodes)
            active = dict(self._active)
        reports: list[DrainReport] = []
        for node in [n for n in active if n not in draining]:
            reports += self._cancelled(active[node])
        for node, deadline_at in draining.items():
            mine = tuple(sorted(m for m, n in placed.items() if n and n == node))
            if not mine:
                continue
            for name in mine:  # again at each look: a machine that restarted is cordoned too
                self._cordon(name)
            if node in active:
                continue
            status = NodeDrainStatus(node, deadline_at, mine)
            with self._lock:
                self._active[node] = status
            self._log.info("node draining", node=node, machines=list(mine),
                           seconds_left=deadline_at - self._clock.time())
            reports += self._evacuate(status, set(draining))
        with self._lock:
            self._reports += reports
        return reports

    def _cordon(self, name: str) -> None:
        with self._lock:
            client = self._clients.get(name)
        if client is not None:
            with contextlib.suppress(TenderError):  # gone: nothing of it to protect
                client.cordon(timeout=self._call_timeout)

    def _cancelled(self, status: NodeDrainStatus) -> list[DrainReport]:
        """The node left the draining set: if its machines still answer, the drain was
        cancelled and they take processes again; if not, the node was taken away."""
        with self._lock:
            self._active.pop(status.node, None)
            clients = [self._clients[m] for m in status.machines if m in self._clients]
        reports = []
        for client in clients:
            uncordon = getattr(client, "uncordon", None)
            if uncordon is None:
                continue
            try:
                uncordon(timeout=self._call_timeout)
            except TenderError:
                continue  # the node is gone with it: not a cancel
            self._log.info("node drain cancelled", node=status.node, machine=client.name)
            reports.append(DrainReport(client.name, 0.0, 0.0, (), (), True,
                                       "the drain was cancelled", node=status.node,
                                       deadline_at=status.deadline_at, outcome="cancelled"))
        return reports

    # --- evacuating ----------------------------------------------------------------------

    def _loads(self) -> list[MachineLoad]:
        with self._lock:
            clients = list(self._clients.values())
        return machine_loads(clients, self._clock, self._call_timeout)

    def _evacuate(self, status: NodeDrainStatus, draining: set[str]) -> list[DrainReport]:
        """Move every process off the node's machines before its deadline, largest first; a
        process the measured speed says cannot arrive in time is checkpointed (or left, by
        name). One report per machine."""
        start = self._clock.time()
        with self._lock:
            placed = dict(self._machine_nodes)
        moved: dict[str, list[MigrationRecord]] = {m: [] for m in status.machines}
        failures: dict[int, str] = {}
        late: set[int] = set()  # predicted to arrive after the deadline
        progress = True
        while progress:
            progress = False
            loads = self._loads()
            by_name = {m.name: m for m in loads}
            # Destinations: machines that answer, take processes and are on a node not drained.
            free = {m.name: m.free_bytes for m in loads
                    if not m.cordoned and placed.get(m.name, "") not in draining}
            load = {n: by_name[n].load for n in free}
            todo = sorted(((p, m.name) for m in loads if m.name in status.machines
                           for p in m.movable if p.pid not in late and p.pid not in failures),
                          key=lambda x: (-x[0].resident_bytes, x[0].pid))
            for p, source in todo:
                left = status.deadline_at - self._clock.time()
                if self._balancer.cost(p.resident_bytes) + MARGIN > left:
                    late.add(p.pid)
                    continue
                dst = _destination(load, free, by_name, p)
                if dst is None:
                    failures[p.pid] = (f"no machine on another node has room for process "
                                       f"{p.pid} ({p.resident_bytes / (1 << 20):.1f} MiB)")
                    continue
                record = self._move(p, source, dst, failures)
                if record is None:
                    continue
                progress = True
                moved[source].append(record)
                free[dst] -= p.resident_bytes
                load[dst] += 1 / max(by_name[dst].computations, 1)
        return [self._finish(status, name, start, moved[name], failures, late)
                for name in status.machines]

    def _move(self, p: ProcessLoad, source: str, destination: str,
              failures: dict[int, str]) -> MigrationRecord | None:
        with self._lock:
            client = self._clients.get(source)
        if client is None:
            return None
        try:
            record = client.migrate(p.pid, destination, self._options,
                                    timeout=self._options.timeout + self._call_timeout)
        except TenderError as exc:
            failures[p.pid] = f"process {p.pid} to {destination}: {exc}"
            return None
        record = dataclasses.replace(record, reason="drain")
        self._balancer.observe(record.bytes, record.seconds)
        if self._on_move is not None:
            self._on_move(record)
        self._log.info("evacuated", pid=p.pid, source=source, destination=destination,
                       seconds=record.seconds)
        return record

    def _finish(self, status: NodeDrainStatus, machine: str, start: float,
                moved: list[MigrationRecord], failures: dict[int, str],
                late: set[int]) -> DrainReport:
        """What is still on `machine`: checkpointed if it can be, else left (and why)."""
        with self._lock:
            client = self._clients.get(machine)
        left: list[int] = []
        gone = ""
        if client is not None:
            try:
                left = [p.pid for p in client.list_processes(timeout=self._call_timeout)
                        if p.state != "zombie"]
            except TenderError as exc:
                gone = f"{machine} stopped answering: {exc}"
        checkpointed: list[int] = []
        checkpoint = getattr(client, "checkpoint", None)
        for pid in list(left):
            if checkpoint is None:
                break
            try:
                checkpoint(pid, timeout=self._call_timeout)
            except TenderError as exc:
                failures.setdefault(pid, f"process {pid} could not be checkpointed: {exc}")
                continue
            checkpointed.append(pid)
            left.remove(pid)
        why = gone
        if not why and (left or checkpointed):
            named = sorted(set(left) | set(checkpointed))
            reasons = [failures[p] for p in named if p in failures]
            if any(p in late for p in named):
                reasons.insert(0, "could not evacuate before the deadline: processes "
                               + ", ".join(str(p) for p in sorted(late & set(named))))
            why = "; ".join(reasons) or "processes stayed"
        outcome = ("incomplete" if left or gone else "checkpointed" if checkpointed
                   else "evacuated")
        seconds_left = status.deadline_at - start
        report = DrainReport(machine, self._clock.time() - start,
                             seconds_left if math.isfinite(seconds_left) else 0.0,
                             tuple(moved), tuple(left), not left and not gone, why,
                             node=status.node, deadline_at=status.deadline_at,
                             checkpointed=tuple(checkpointed), outcome=outcome)
        if report.ok:
            self._log.info("node drain done", machine=machine, outcome=outcome,
                           moved=len(moved), checkpointed=checkpointed)
        else:
            self._log.warning("node drain incomplete", machine=machine, left=left, why=why)
        return report


def _destination(load: dict[str, float], free: dict[str, int],
                 machines: dict[str, MachineLoad], p: ProcessLoad) -> str | None:
    """The least loaded destination with room for `p`."""
    for name in sorted(load, key=lambda n: (load[n], n)):
        if free[name] >= p.resident_bytes + HEADROOM and not machines[name].cordoned:
            return name
    return None
