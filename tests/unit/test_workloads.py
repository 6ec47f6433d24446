"""Every workload runs on a Machine exactly as it runs natively: stdout, stderr, status."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.machines import run_on_machine
from support.programs import run_native

from tender_ray.config import workloads_dir
from tender_ray.kernel.machine import Machine

BIN = workloads_dir()  # the committed binaries (or $TENDER_WORKLOADS)

# Small sizes: the whole set takes a few seconds under emulation.
ARGS: dict[str, list[str]] = {
    "sieve": ["200000"],
    "hashwalk": ["2"],
    "recursion_fp": ["200"],
    "compute_sleep": ["2"],
    "rmw_counter": ["200000"],
    "bigmmap": ["4"],
    "deepstack": ["20000"],
    "mallocstress": ["3000"],
    "args": ["first", "second arg", "--third=3"],
    "exitcode": ["3"],
    "memhold": ["2", "5", "2"],
    # It runs until told to finish (support.machines.finish_standby): here its usage error.
    "standby": ["1", "idle"],
}
# Native output legitimately differs: socket() succeeds on the host.
NATIVE_DIFFERS = {"unsupported"}
ENV = {"TENDER_TEST": "workloads suite"}

PROGRAMS = sorted(p.name for p in BIN.iterdir()
                  if p.is_file() and p.stat().st_mode & 0o111 and p.name not in NATIVE_DIFFERS)


def test_the_workloads_are_there() -> None:
    assert {"hello", "sieve", "hashwalk", "recursion_fp", "rmw_counter", "bigmmap",
            "mallocstress", "floats", "segv", "sigill"} <= set(PROGRAMS)


@pytest.mark.parametrize("name", PROGRAMS)
def test_workload_matches_native(name: str, make_machine: Callable[..., Machine]) -> None:
    machine = make_machine(quantum_us=1000)
    path = BIN / name
    args = ARGS.get(name, [])
    native = run_native(path, args, ENV)
    status, out, err, info = run_on_machine(machine, path, args, ENV)
    assert status == native[0], info.exit_reason
    assert out == native[1]
    assert err == native[2]
    assert out or err, "a workload always prints something"
    assert info.unsupported == {}, info.unsupported
    mem = machine.statistics().memory
    assert mem.frames_free == mem.frames_total
