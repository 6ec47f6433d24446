"""The restart watch of a `tender-ray up` cluster: no scenario or exec driver follows the
machines there, so the balancer actor runs this next to its loop. Each round it lists every
machine's processes (keeping the last list per machine: which pids a machine held); when Ray
reports a machine's actor dead (`MachineStoppedError`), it asks the supervisor to restart the
processes that machine last held from their checkpoints on the live machines (`recover`)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tender_ray import logs
from tender_ray.cluster.cluster import Cluster
from tender_ray.cluster.supervisor import Recovery, recover
from tender_ray.errors import MachineStoppedError, NoReplyError
from tender_ray.resources.process import ProcessState

log = logs.get(__name__)


class RestartWatch:
    """Follows machines by name; a dead one's last-listed live processes are recovered."""

    def __init__(self, prefix: str, interval: float,
                 on_dead: Callable[[str, Recovery], None] | None = None) -> None:
        # A view of the machines over their detached actors: the supervisor works on a Cluster.
        self._cluster = Cluster(prefix=prefix, watch_drains=False)
        self._interval = interval  # seconds between rounds (the balancer's)
        self._on_dead = on_dead or (lambda _name, _recovery: None)  # the owner drops the machine
        # The pids each machine held at the last round (written by the watch thread only).
        self._last: dict[str, set[int]] = {}
        self._lock = threading.Lock()  # guards the view's machine set against add/remove
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restart-watch", daemon=True)
        self.recoveries: list[Recovery] = []  # every recovery made, oldest first

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self._interval + 30)

    def add_machine(self, name: str) -> None:
        with self._lock:
            self._cluster.attach({name: 0}, balancer=False)

    def remove_machine(self, name: str) -> None:
        """A machine stopped on purpose (or drained away): no restart for its processes."""
        with self._lock:
            self._drop(name)
            self._last.pop(name, None)

    def _drop(self, name: str) -> None:
        # Cluster has no way to drop one handle without killing the actor; a fresh view of the
        # others does it.
        keep = [n for n in self._cluster.machines if n != name]
        self._cluster.forget()
        if keep:
            self._cluster.attach(dict.fromkeys(keep, 0), balancer=False)

    def round(self) -> None:
        """One look at every machine: remember what each holds, recover the dead ones."""
        with self._lock:
            listed = self._cluster.list_all()
            for name, result in listed.items():
                # No reply in time is a MachineStoppedError too, but the machine may live.
                if isinstance(result, MachineStoppedError) and not isinstance(result,
                                                                              NoReplyError):
                    self._recover(name)
                elif not isinstance(result, BaseException):
                    # A zombie has ended: restarting it would run it a second time.
                    self._last[name] = {p.pid for p in result
                                        if p.state != ProcessState.ZOMBIE.value}
                # Another error (no reply in time): alive but slow; look again next round.

    def _recover(self, name: str) -> None:
        pids = sorted(self._last.pop(name, set()))
        recovery = recover(self._cluster, name, pids)  # it also drops `name` from the view
        for e in recovery.elsewhere:  # an exec driver (say) was first: handled, not lost
            log.info("process restarted by another restarter", pid=e.pid, machine=e.machine,
                     lost_machine=name)
        self.recoveries.append(recovery)
        self._on_dead(name, recovery)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.round()
            except Exception:  # a round that failed must not end the watch
                log.exception("restart watch round failed")


__all__ = ["RestartWatch"]
