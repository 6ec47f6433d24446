"""The balancing loop: rounds that look at every machine, plan moves with a `Balancer` and
carry them out, drains that wait until a machine is empty, and machines on nodes the cluster
manager drains cordoned. Plain Python over the `MachineClient`, `DrainingNodes` and `Clock`
protocols: the Ray layer's balancer actor runs it over machine handles, tests over fakes."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

from tender_ray import logs
from tender_ray.balancing.client import (
    Clock,
    DrainingNodes,
    MachineClient,
    SystemClock,
)
from tender_ray.balancing.node_drain import NodeDrains, machine_loads
from tender_ray.balancing.policies import (
    HEADROOM,
    Balancer,
    BalancerParams,
    MachineLoad,
    Move,
)
from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.errors import TenderError, UnknownMachineError
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord

CALL_TIMEOUT = 30.0  # seconds a machine may take to answer a control call
IDLE_BACKOFF = 8  # a quiet balancer waits up to this many intervals between rounds
PARALLEL_MOVES = 4  # migrations of one round under way at once, at most
KICK_SETTLE = 0.05  # seconds a balancer told of a change waits for the changes after it
NODE_CHECK_INTERVAL = 1.0  # seconds between questions about nodes being drained
DRAIN_POLL = 0.05  # seconds between looks at a machine being drained, at most


class BalancingLoop:
    """Watches machines and migrates processes as its `Balancer` plans (policy, drains, and
    machines on nodes being drained); keeps the record of what it did."""

    def __init__(self, params: BalancerParams, options: MigrationOptions, interval: float, *,
                 nodes: DrainingNodes | None = None, clock: Clock | None = None,
                 call_timeout: float = CALL_TIMEOUT) -> None:
        self._log = logs.get("balancer")
        self._balancer = Balancer(params)
        self._options = options
        self._interval = interval
        self._nodes = nodes
        self._clock: Clock = clock or SystemClock()
        self._call_timeout = call_timeout
        self._lock = threading.Lock()  # guards everything below that rounds and calls share
        self._clients: dict[str, MachineClient] = {}
        self._machine_nodes: dict[str, str] = {}  # machine -> the node it runs on
        self._migrations: list[MigrationRecord] = []
        self._in_flight: dict[str, int] = {}  # source machine -> migrations under way
        self._failures: list[str] = []
        self._drains: list[DrainReport] = []
        self._last_seen: tuple[object, ...] = ()  # what the last round saw, to tell a change
        self._last_loads: list[MachineLoad] = []  # the last round's snapshots, for drains
        self._move_failures: dict[str, str] = {}  # source machine -> its last failed move
        self._next_node_check = 0.0  # monotonic time the draining nodes are next asked for
        # The cluster manager's node drains, followed with their deadlines (none: not asked).
        self._node_drains = None if nodes is None else NodeDrains(
            nodes, options=options, clock=self._clock, balancer=self._balancer,
            call_timeout=call_timeout, on_move=self._record_drain_move)
        self._stop = threading.Event()
        self._kick = threading.Event()  # ends the wait before the next round
        self._thread: threading.Thread | None = None

    # --- machines -------------------------------------------------------------------------

    def add_machine(self, client: MachineClient, node: str = "") -> None:
        """Balance `client` too; `node`: the node it runs on ("" when nobody drains nodes)."""
        with self._lock:
            self._clients[client.name] = client
            self._machine_nodes[client.name] = node
        if self._node_drains is not None:
            self._node_drains.add_machine(client, node)
        self._kick.set()

    def remove_machine(self, name: str) -> None:
        with self._lock:
            self._clients.pop(name, None)
            self._machine_nodes.pop(name, None)
        if self._node_drains is not None:
            self._node_drains.remove_machine(name)

    def kick(self) -> None:
        """A machine's processes changed: balance now rather than at the next interval."""
        self._kick.set()

    # --- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Run rounds in a thread of their own until `stop`."""
        self._thread = threading.Thread(target=self.run, daemon=True, name="balancer")
        self._thread.start()

    def run(self) -> None:
        wait: float | None = self._interval
        while wait is not None:
            wait = self.step(wait)

    def step(self, wait: float) -> float | None:
        """Wait up to `wait` seconds (less when kicked), then one round; the wait before the
        next round, or None once stopped.

        A round that finds nothing changed and nothing to do doubles the wait (up to
        IDLE_BACKOFF intervals): a balanced cluster is asked less often, which leaves its
        processors to the processes. A change, a move or a failed round brings the interval
        back."""
        if self._wait(wait):
            # Let a burst of changes (processes started together) settle into one round.
            self._clock.wait(self._stop, KICK_SETTLE)
        self._kick.clear()
        if self._stop.is_set():
            return None
        try:
            busy = self.round()
        except Exception as exc:  # the loop must survive a bad round
            with self._lock:
                self._failures.append(f"round failed: {exc!r}")
            busy = True
        return self._interval if busy else min(wait * 2, self._interval * IDLE_BACKOFF)

    def _wait(self, wait: float) -> bool:
        """Wait up to `wait` seconds for a kick (whether one came). A loop that follows node
        drains still looks at the draining nodes every NODE_CHECK_INTERVAL while it backs
        off, so a drain's deadline never waits out an idle back-off."""
        if self._node_drains is None:
            return self._clock.wait(self._kick, wait)
        end = self._clock.monotonic() + wait
        while (left := end - self._clock.monotonic()) > 0:
            # Until the next look is due (a wait of a whole interval could end just short).
            due = max(self._next_node_check - self._clock.monotonic(), 0.01)
            if self._clock.wait(self._kick, min(left, due)):
                return True
            if self._stop.is_set() or self._cordon_draining_nodes():
                return True  # a node's drain began or ended: a round now
        return False

    def round(self) -> bool:
        """One look at every machine and the moves planned from it; whether anything had
        changed since the last round or was moved."""
        self._cordon_draining_nodes()
        machines = self._snapshots()
        # Running and runnable alternate with every quantum: both count as one state here.
        seen = tuple(sorted((m.name, m.cordoned, m.runnable,
                             tuple(sorted((p.pid, p.state.replace("running", "runnable"))
                                          for p in m.processes)))
                            for m in machines))
        changed, self._last_seen = seen != self._last_seen, seen
        with self._lock:
            self._last_loads = machines
        moves = self._balancer.plan(machines, self._clock.monotonic())
        if len(moves) > 1:
            # The moves of a round concern distinct processes: they go at once, so a
            # machine that was idle gets all its work in one migration time, not several.
            with ThreadPoolExecutor(min(len(moves), PARALLEL_MOVES),
                                    thread_name_prefix="move") as pool:
                list(pool.map(self._move, moves))
        else:
            for move in moves:
                self._move(move)
        return changed or bool(moves)

    def stop(self) -> BalancerState:
        """End the rounds (waiting for the one under way); the final state."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.state()

    def _snapshots(self) -> list[MachineLoad]:
        with self._lock:
            clients = list(self._clients.values())
        return machine_loads(clients, self._clock, self._call_timeout)

    def _cordon_draining_nodes(self) -> bool:
        """The cluster manager drains a node (preemption, `ray drain-node`): cordon its
        machines and evacuate them before its deadline (`NodeDrains`). Asked at most every
        NODE_CHECK_INTERVAL: a drain is announced with a deadline of tens of seconds, and
        each question costs the cluster manager.
        Whether a node's drain ended (evacuated, or cancelled) in this look."""
        if self._node_drains is None:
            return False
        now = self._clock.monotonic()
        if now < self._next_node_check:
            return False
        self._next_node_check = now + NODE_CHECK_INTERVAL
        reports = self._node_drains.check()
        with self._lock:
            self._drains += reports
        return bool(reports)

    def _record_drain_move(self, record: MigrationRecord) -> None:
        with self._lock:
            self._balancer.moved(record.pid, self._clock.monotonic())
            self._migrations.append(record)

    def _move(self, move: Move) -> None:
        with self._lock:
            client = self._clients.get(move.source)
            if client is None:
                return
            self._in_flight[move.source] = self._in_flight.get(move.source, 0) + 1
        try:
            record = client.migrate(move.pid, move.destination, self._options,
                                    timeout=self._options.timeout + self._call_timeout)
        except TenderError as exc:
            with self._lock:
                self._failures.append(f"{move}: {exc}")
                self._move_failures[move.source] = (f"process {move.pid} to "
                                                    f"{move.destination}: {exc}")
            return
        finally:
            with self._lock:
                self._in_flight[move.source] -= 1
        record = dataclasses.replace(record, reason=move.reason)
        with self._lock:
            self._balancer.moved(move.pid, self._clock.monotonic())
            self._balancer.observe(record.bytes, record.seconds)
            self._migrations.append(record)
        self._log.info("migrated", pid=move.pid, source=move.source,
                       destination=move.destination, reason=move.reason,
                       seconds=record.seconds)

    # --- drains and the record ------------------------------------------------------------

    def drain(self, machine: str, deadline: float) -> DrainReport:
        """Cordon `machine`, wait until the rounds have moved every process off it or the
        deadline (seconds) passes; what moved and how long each took."""
        start = self._clock.time()
        with self._lock:
            client = self._clients.get(machine)
        if client is None:
            raise UnknownMachineError(f"the balancer does not know machine {machine!r}")
        with self._lock:
            self._move_failures.pop(machine, None)  # only this drain's failures explain it
        client.cordon(timeout=self._call_timeout)
        self._kick.set()  # the next round now, not after an idle wait
        left: list[int] = []
        seen: set[int] = set()  # every process found there during the drain
        gone = ""  # why the machine stopped answering, if it did
        while True:  # one look at least, even with a deadline already past
            try:
                procs = client.list_processes(timeout=self._call_timeout)
            except TenderError as exc:
                gone = f"{machine} stopped answering: {exc}"
                break
            left = [p.pid for p in procs if p.state != "zombie"]
            seen.update(left)
            with self._lock:
                moving = self._in_flight.get(machine, 0)
            if not left and not moving:  # empty, and every move off it is recorded
                break
            if self._clock.time() - start >= deadline:
                break
            self._clock.sleep(min(self._interval, DRAIN_POLL))
        with self._lock:
            moved = tuple(r for r in self._migrations
                          if r.source == machine and r.started_at >= start)
            failure = self._move_failures.get(machine, "")
        ended = tuple(sorted(seen - {r.pid for r in moved} - set(left)))
        why = gone
        if not why and (left or (ended and not moved)):
            # Processes stayed (or ended there, where they could have moved off): say why.
            why = (self._no_destination(machine, left or list(ended))
                   or (f"moves off failed: {failure}" if failure and left else "")
                   or ("the moves under way did not finish before the deadline" if left
                       else ""))
        report = DrainReport(machine, self._clock.time() - start, deadline, moved, tuple(left),
                             not left and not gone, why, ended)
        with self._lock:
            self._drains.append(report)
        if not report.ok:
            self._log.warning("drain incomplete", machine=machine, left=list(left), why=why)
        return report

    def _no_destination(self, machine: str, pids: list[int]) -> str:
        """Why no other machine can take `pids` off `machine`, as the balancer last saw them
        (the last round's snapshots, or a fresh look when no round has run); "" if one can."""
        with self._lock:
            loads = list(self._last_loads)
            known = set(self._clients) - {machine}
        if not loads:
            loads = self._snapshots()
        others = [m for m in loads if m.name != machine]
        if not others:
            return "no other machine answers" if known else "no other machine"
        takers = [m for m in others if not m.cordoned]
        if not takers:
            return "every other machine is cordoned"
        here = next((m for m in loads if m.name == machine), None)
        sizes = {p.pid: p.resident_bytes for p in (here.processes if here else ())}
        big = [pid for pid in pids if pid in sizes]
        if not big:
            return ""
        pid = max(big, key=lambda q: sizes[q])
        best = max(takers, key=lambda m: m.free_bytes)
        need = sizes[pid] + HEADROOM
        if need > best.free_bytes:
            return (f"no other machine has room: process {pid} needs {need / (1 << 20):.1f} "
                    f"MiB free, the most is {best.free_bytes / (1 << 20):.1f} MiB on "
                    f"{best.name}")
        return ""

    def state(self) -> BalancerState:
        with self._lock:
            return BalancerState(self._balancer.rounds, self._balancer.decisions,
                                 tuple(self._migrations), tuple(self._failures),
                                 tuple(self._drains), self._draining_nodes(),
                                 self._balancer.params.policy.value,
                                 self._node_drains.signal_errors if self._node_drains else 0)

    def _draining_nodes(self) -> tuple[str, ...]:
        if self._node_drains is None:
            return ()
        return tuple(d.node for d in self._node_drains.draining)
