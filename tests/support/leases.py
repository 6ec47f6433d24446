"""Machines with a short migration lease, for the protocol's tests without Ray: `LEASE`, the
workload they migrate (`ARGS` of memhold), a factory of such machines, and `only_on`, the
check that exactly one copy ran (on the holder, with native output)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support.machines import finish
from support.programs import native
from tender_ray.errors import UnknownProcessError
from tender_ray.kernel.machine import Machine

MakeMachine = Callable[..., Machine]

ARGS = ("2", "30", "5")  # memhold: a couple of MiB, touched and slept on for a while
LEASE = 0.4  # seconds: short, so an expiry is quick to see


def short_lease_machines(make_machine: MakeMachine) -> MakeMachine:
    """A factory of machines by name: emulated, 1 ms quanta, a lease of `LEASE` seconds."""
    def make(name: str, **config: object) -> Machine:
        config.setdefault("quantum_us", 1000)
        config.setdefault("engine", "emulated")
        config.setdefault("migration_lease_s", LEASE)
        return make_machine(name=name, **config)
    return make


def only_on(holder: Machine, other: Machine, pid: int) -> None:
    """The process ends on `holder` exactly as natively, and `other` has no copy of it."""
    with pytest.raises(UnknownProcessError):
        other.info(pid)
    status, out, err, _ = finish(holder, pid)
    assert (status, out, err) == native("memhold", *ARGS)
    with pytest.raises(UnknownProcessError):
        other.info(pid)
