"""Machines with a short migration lease, for the protocol's tests without Ray: `LEASE` (and
`KEPT_LEASE`, for a lease that must hold through a slow source), the
workload they migrate (`ARGS` of standby, which runs until told to finish, so it is there for
every step however slow the host), a factory of such machines, and `only_on`, the check that
exactly one copy ran (on the holder, told to finish, with native output)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support.machines import finish_standby
from support.programs import native_standby
from tender_ray.errors import UnknownProcessError
from tender_ray.kernel.machine import Machine

MakeMachine = Callable[..., Machine]

ARGS = ("2",)  # standby: a couple of MiB, touched, napping until told to finish
LEASE = 0.4  # seconds: short, so an expiry is quick to see
# A lease the renewals (three a lease) keep even on a busy host, where a renewal can come a
# second late: for the tests in which the lease must hold while the source is slow.
KEPT_LEASE = 1.5


def short_lease_machines(make_machine: MakeMachine) -> MakeMachine:
    """A factory of machines by name: emulated, 1 ms quanta, a lease of `LEASE` seconds."""
    def make(name: str, **config: object) -> Machine:
        config.setdefault("quantum_us", 1000)
        config.setdefault("engine", "emulated")
        config.setdefault("migration_lease_s", LEASE)
        return make_machine(name=name, **config)
    return make


def only_on(holder: Machine, other: Machine, pid: int, taken: bytes) -> None:
    """The process (standby, `taken` its output so far) ends on `holder`, told to finish,
    exactly as natively, and `other` has no copy of it."""
    with pytest.raises(UnknownProcessError):
        other.info(pid)
    status, out, err, _ = finish_standby(holder, pid, taken)
    assert (status, out, err) == native_standby(*ARGS)
    with pytest.raises(UnknownProcessError):
        other.info(pid)
