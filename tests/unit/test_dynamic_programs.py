"""Debian's dynamically linked PIE programs run on a machine, each engine, byte for byte as the
same file natively: the kernel maps the program and its dynamic loader, which maps the
libraries through file mmaps; and such a process migrates mid-run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES, NATIVE_OK, NATIVE_WHY
from support.machines import bounce, bounce_enough, finish, local_mover, run_on_machine
from support.programs import need, run_native, workload

from tender_ray.engines import features
from tender_ray.errors import MigrationError
from tender_ray.kernel.machine import Machine, choosing_features
from tender_ray.resources.program import parse_program

MakeMachine = Callable[..., Machine]


def _same_as_native(machine: Machine, path: str, args: list[str],
                    env: dict[str, str] | None = None) -> None:
    native = run_native(path, args, env=env)
    status, out, err, _ = run_on_machine(machine, path, args, env, timeout=120)
    assert (status, out) == native[:2], err


@pytest.mark.parametrize("engine", ENGINES)
def test_true_and_echo(make_machine: MakeMachine, engine: str) -> None:
    need("/usr/bin/true", "/usr/bin/echo")
    machine = make_machine(engine=engine, memory_mib=128)
    _same_as_native(machine, "/usr/bin/true", [])
    _same_as_native(machine, "/usr/bin/echo", ["hi"])


@pytest.mark.parametrize("engine", ENGINES)
def test_sha256sum_of_a_file(make_machine: MakeMachine, engine: str, tmp_path: Path) -> None:
    need("/usr/bin/sha256sum")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(3000))
    _same_as_native(make_machine(engine=engine, memory_mib=128), "/usr/bin/sha256sum",
                    [os.fspath(data)])


@pytest.mark.parametrize("engine", ENGINES)
def test_sort(make_machine: MakeMachine, engine: str, tmp_path: Path) -> None:
    need("/usr/bin/sort")
    data = tmp_path / "lines"
    data.write_bytes(b"pear\napple\nfig\n")
    _same_as_native(make_machine(engine=engine, memory_mib=128), "/usr/bin/sort",
                    [os.fspath(data)])


@pytest.mark.parametrize("engine", ENGINES)
def test_python3(make_machine: MakeMachine, engine: str) -> None:
    need("/usr/bin/python3")
    _same_as_native(make_machine(engine=engine, memory_mib=256), "/usr/bin/python3",
                    ["-S", "-c", "print(1+1)"])


@pytest.mark.parametrize("engine", ENGINES)
def test_sha256sum_migrating_every_50_ms(make_machine: MakeMachine, engine: str,
                                         tmp_path: Path) -> None:
    """Between machines of one engine: glibc chose its code paths from the CPU it started on
    (see engines' CPU features), so every machine here offers the same ones."""
    need("/usr/bin/sha256sum")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(8 << 20))
    machines = [make_machine(name=f"m{i}", engine=engine, memory_mib=128,
                             pid_base=1000 * (i + 1))
                for i in range(3)]
    # Natively 8 MiB take milliseconds: the file is named several times to last some moves
    # (more when a busy host let a run end after fewer than two).
    names = 2 if engine == "emulated" else 16

    def launch(scale: int) -> int:
        return machines[0].exec(Path("/usr/bin/sha256sum").read_bytes(), "sha256sum",
                                ["/usr/bin/sha256sum", *[os.fspath(data)] * (names * scale)])

    scale, pid, where, _ = bounce_enough(machines, launch, move=local_mover(), enough=2,
                                         scales=(1, 3), pause=0.05)
    args = [os.fspath(data)] * (names * scale)
    status, out, err, _ = finish(machines[where], pid, 120)
    line = f"{hashlib.sha256(data.read_bytes()).hexdigest()}  {data}\n"
    assert (status, out) == (0, line.encode() * len(args)), err
    assert (status, out) == run_native("/usr/bin/sha256sum", args)[:2]


@pytest.mark.parametrize("engine", ENGINES)
def test_migrating_while_the_loader_maps_the_libraries(make_machine: MakeMachine, engine: str,
                                                       tmp_path: Path) -> None:
    """Moved every few hundred microseconds from its first instruction, the process arrives
    between the loader's openat of a library and its mmaps of it: the descriptor is reopened
    at the destination before the mapping reads it."""
    need("/usr/bin/sha256sum")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(3000))
    machines = [make_machine(name=f"m{i}", engine=engine, memory_mib=128,
                             pid_base=1000 * (i + 1)) for i in range(2)]
    image = Path("/usr/bin/sha256sum").read_bytes()
    native = run_native("/usr/bin/sha256sum", [os.fspath(data)])[:2]
    for _ in range(5):
        pid = machines[0].exec(image, "sha256sum", ["/usr/bin/sha256sum", os.fspath(data)])
        where, records = bounce(machines, pid, move=local_mover(), pause=0.0005,
                                max_moves=300)
        status, out, err, _ = finish(machines[where], pid, 120)
        assert (status, out) == native, err
        assert records, "never migrated"


def test_engines_report_their_cpu_features() -> None:
    emulated = features.emulated_features()
    assert {"sse2", "ssse3", "sse4_2", "popcnt"} <= emulated  # Unicorn's x86-64-v2 baseline
    assert not {"avx", "avx2", "avx512f"} & emulated  # not emulated
    assert features.host_features() <= features.KNOWN


@pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)
def test_a_glibc_process_moves_only_to_an_engine_with_its_features(
        make_machine: MakeMachine) -> None:
    need("/usr/bin/sha256sum")
    native = make_machine(name="nat", engine="native", memory_mib=128)
    emulated = make_machine(name="emu", engine="emulated", memory_mib=128, pid_base=5000)
    image = Path("/usr/bin/sha256sum").read_bytes()
    # /dev/zero never ends: the process is still running when it is asked to move.
    lacking = features.missing(features.host_features(), features.emulated_features())
    pid = native.exec(image, "sha256sum", ["sha256sum", "/dev/zero"])
    if lacking:
        with pytest.raises(MigrationError, match=f"{sorted(lacking)[0]}.*emu's emulated engine"):
            local_mover()(native, pid, emulated)
        assert native.info(pid).exit_status is None  # still going at its source
    native.kill(pid)
    # Started on the smaller set, it may go to the host's (and back).
    pid = emulated.exec(image, "sha256sum", ["sha256sum", "/dev/zero"])
    assert features.missing(features.emulated_features(), features.host_features()) == set()
    local_mover()(emulated, pid, native)
    local_mover()(native, pid, emulated)
    emulated.kill(pid)
    # A musl program chose nothing by cpuid: it moves anywhere.
    static = workload("hello").read_bytes()
    assert choosing_features(parse_program(static, "hello"), static, "native") == frozenset()
