"""The whole vector state moves with a process: values held in AVX (ymm) and AVX-512 (zmm16,
k1) registers across spin loops come back intact while the process is bounced between
native machines every few milliseconds, as in its native run. (A native engine that kept only
the FXSAVE area lost the upper halves: glibc's memcpy, frozen between its vector load and
store, wrote zeros.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import bounce_enough, finish, local_mover
from support.programs import native, workload

from tender_ray.kernel.machine import Machine

pytestmark = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)


def test_vector_registers_survive_migration(make_machine: Callable[..., Machine]) -> None:
    machines = [make_machine(name=f"v{i}", quantum_us=1000, engine="native") for i in range(2)]

    def launch(scale: int) -> int:
        return machines[0].exec(workload("vector_state").read_bytes(), "vector_state",
                                ["vector_state", str(300 * scale), "2000000"])

    # Twenty moves at least: values must be caught in the registers many times over.
    scale, pid, where, _ = bounce_enough(machines, launch, move=local_mover(), enough=20,
                                         pause=0.002)
    status, expected, _ = native("vector_state", str(300 * scale), "2000000")
    assert status == 0 and b"0 lost" in expected
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == (0, expected, b""), info.exit_reason
