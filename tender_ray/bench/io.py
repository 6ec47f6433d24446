"""The system-call-heavy benchmark: real programs that read and write through the machine's
file calls, run natively and on a Tender machine of each engine, side by side.

Cases: Debian's `sha256sum` of a generated file (read in 64 KiB blocks by default: `--size`
MiB), `gzip -c -1` of that file as its standard input, and `sha256sum` again with the process
migrated once to a second machine of the same engine as soon as it has started, so every read
after the move goes through the descriptors the destination reopened. Home I/O: the same
migrated read when the second machine has no file system of the first (`host_files: home`),
so every read after the move is fetched from the process's home in 4 MiB blocks, read ahead —
once over a direct link in this process (the deputy's own cost) and once between two machine
actors of an embedded Ray (`--no-ray` skips it), through Ray's object store as between nodes.
Each round runs the native program and then each engine, so host load hits all columns alike;
the best of `--repeat` rounds is kept and every output is checked against the native one:

    tender-ray bench io [--size 256] [--engines native,emulated] [--repeat 3] [--no-ray]
                        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tender_ray.bench.options import DEFAULT_ENGINES, usable_engines
from tender_ray.config import Engine, HostFiles, MachineConfig
from tender_ray.errors import ProcessStateError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.protocol import migrate_local
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import DirectLink

if TYPE_CHECKING:
    from tender_ray.cluster import MachineHandle

WAIT_TIMEOUT = 3600.0
TARGET_RATIO = 1.5  # what the native engine aims at on these cases


SHA256SUM = "/usr/bin/sha256sum"


def _cases(data: Path) -> list[tuple[str, str, list[str], str | None, bool]]:
    """(label, program, args, stdin file, migrate once)."""
    return [("sha256sum FILE", SHA256SUM, [str(data)], None, False),
            ("gzip -c -1 <FILE", "/usr/bin/gzip", ["-c", "-1"], str(data), False),
            ("sha256sum FILE, migrated", SHA256SUM, [str(data)], None, True)]


class _Runner(Protocol):
    """What a run needs of a machine: a `Machine`, or a `MachineHandle` of an actor."""

    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = (), *, files: FileViewSpec | None = None,
             stdin: str = "empty") -> int: ...
    def info(self, pid: int) -> ProcessInfo: ...
    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo: ...
    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]: ...


def _native(program: str, args: list[str], stdin: str | None) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    with open(stdin or os.devnull, "rb") as source:
        done = subprocess.run([program, *args], stdin=source, capture_output=True,
                              check=False)
    return time.perf_counter() - start, done.returncode, done.stdout


def _tender(machines: tuple[_Runner, _Runner], program: str, args: list[str],
            stdin: str | None, migrate: bool,
            move: Callable[[int], float] | None = None) -> tuple[float, int | None, bytes, float]:
    """One run: (seconds from exec to exit, status, stdout, migration seconds or 0).
    `move(pid)` migrates it from the first machine to the second (default: in-process)."""
    first, second = machines
    image = Path(program).read_bytes()
    view = FileViewSpec(cwd=os.getcwd(), writable=())
    start = time.perf_counter()
    pid = first.exec(image, Path(program).name, [program, *args], files=view,
                     stdin=stdin or "empty")
    where, moved = first, 0.0
    if migrate:
        time.sleep(0.02)  # it has started reading
        try:
            if move is None:
                assert isinstance(first, Machine) and isinstance(second, Machine)
                moved = migrate_local(first, pid, second).seconds
            else:
                moved = move(pid)
            where = second
        except ProcessStateError:  # it ended first (a small file): it stays, 0 s of moving
            pass
    info = where.wait(pid, timeout=WAIT_TIMEOUT)
    seconds = time.perf_counter() - start
    info, out, _err = where.reap(pid)
    return seconds, info.exit_status, out, moved


def _column(engine: str, runs: list[tuple[float, int | None, bytes, float]],
            native: list[tuple[float, int, bytes]]) -> dict[str, Any]:
    best, best_native = min(r[0] for r in runs), min(n[0] for n in native)
    return {"engine": engine, "best_s": round(best, 4), "ratio": round(best / best_native, 3),
            "migration_s": round(max(r[3] for r in runs), 4),
            "identical": all((r[1], r[2]) == native[0][1:] for r in runs)}


def _home_pair(engine: str) -> tuple[Machine, Machine]:
    """Two machines where the second has no files of the first's: it reaches them over a
    direct link to the first's home side."""
    home = Machine(MachineConfig(name=f"io-{engine}-home", engine=Engine(engine),
                                 computations=1, memory_mib=256))
    away = Machine(MachineConfig(name=f"io-{engine}-away", engine=Engine(engine),
                                 computations=1, memory_mib=256, host_files=HostFiles.HOME),
                   pid_base=600_000)
    away.host_tree.link = lambda name: DirectLink(name, home.host_tree.home)
    return home, away


def ray_home_runs(engines: Sequence[str], data: Path, repeat: int
              ) -> dict[str, list[tuple[float, int | None, bytes, float]]]:
    """The migrated sha256sum between two machine actors of an embedded Ray, the second
    reaching the first's files only through its actor (`host_files: home`)."""
    from tender_ray.cluster import Cluster

    cluster = Cluster(num_cpus=2, object_store_mib=512, prefix="bench-io-")
    try:
        runs = {}
        for engine in engines:
            home = cluster.add_machine(MachineConfig(
                name=f"io-{engine}-ray-home", engine=Engine(engine), memory_mib=256))
            away = cluster.add_machine(MachineConfig(
                name=f"io-{engine}-ray-away", engine=Engine(engine), memory_mib=256,
                host_files=HostFiles.HOME))

            def move(pid: int, home: MachineHandle = home, away: MachineHandle = away) -> float:
                return home.migrate(pid, away.name, MigrationOptions(), timeout=600).seconds
            runs[engine] = [_tender((home, away), SHA256SUM, [str(data)], None, True, move)
                            for _ in range(repeat)]
        return runs
    finally:
        cluster.shutdown()


def io_benchmark(size_mib: int = 256, engines: Sequence[str] = ("native", "emulated"),
                 repeat: int = 3, ray: bool = True) -> dict[str, Any]:
    """Run time ÷ native per case and engine (see the module's docstring)."""
    for program in ("/usr/bin/sha256sum", "/usr/bin/gzip"):
        if not Path(program).is_file():
            raise FileNotFoundError(f"{program} is not installed (Debian: coreutils, gzip)")
    with tempfile.TemporaryDirectory(prefix="tender-bench-io-") as tmp:
        data = Path(tmp) / "data"
        with data.open("wb") as f:  # compressible but not trivial: text with random words
            block = b"".join(os.urandom(8).hex().encode() + b" \n"[i % 2:i % 2 + 1]
                             for i in range(4096))
            for _ in range(size_mib * (1 << 20) // len(block) + 1):
                f.write(block)
        pairs = {e: (Machine(MachineConfig(name=f"io-{e}-a", engine=Engine(e),
                                           computations=1, memory_mib=256)),
                     Machine(MachineConfig(name=f"io-{e}-b", engine=Engine(e),
                                           computations=1, memory_mib=256),
                             pid_base=500_000))
                 for e in engines}
        rows: list[dict[str, Any]] = []
        try:
            for label, program, args, stdin, migrate in _cases(data):
                native = [_native(program, args, stdin) for _ in range(repeat)]
                columns = {engine: _column(pair[0].engine, [
                    _tender(pair, program, args, stdin, migrate) for _ in range(repeat)],
                    native) for engine, pair in pairs.items()}
                rows.append({"case": label, "native_s": round(min(n[0] for n in native), 4),
                             "engines": columns})
            native = [_native(SHA256SUM, [str(data)], None) for _ in range(repeat)]
            columns = {}
            for engine, pair in list(pairs.items()):
                home_pair = _home_pair(engine)
                pairs[f"{engine}-home"] = home_pair  # stopped with the others
                columns[engine] = _column(pair[0].engine, [
                    _tender(home_pair, SHA256SUM, [str(data)], None, True)
                    for _ in range(repeat)], native)
            rows.append({"case": "sha256sum FILE, migrated, home I/O (direct)",
                         "native_s": round(min(n[0] for n in native), 4), "engines": columns})
            if ray:
                runs = ray_home_runs(list(engines), data, repeat)
                rows.append({"case": "sha256sum FILE, migrated, home I/O (Ray actors)",
                             "native_s": round(min(n[0] for n in native), 4),
                             "engines": {e: _column(pairs[e][0].engine, r, native)
                                         for e, r in runs.items()}})
        finally:
            for pair in pairs.values():
                for machine in pair:
                    machine.stop()
    local = rows[2]["engines"]  # the same migrated read, its files opened where it runs
    for row in rows[3:]:  # what going home costs over that
        for engine, column in row["engines"].items():
            column["vs_local"] = round(column["best_s"] / local[engine]["best_s"], 3)
    return {"size_mib": size_mib, "repeat": repeat, "engines": list(engines), "rows": rows}


def print_io_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"system-call-heavy programs, {result['size_mib']} MiB, "
                        f"best of {result['repeat']}")
    table.add_column("case")
    table.add_column("native s", justify="right")
    for engine in result["engines"]:
        table.add_column(f"{engine} s", justify="right")
        table.add_column(f"{engine} ÷ native", justify="right")
    for row in result["rows"]:
        cells = [row["case"], f"{row['native_s']:.3f}"]
        for engine in result["engines"]:
            c = row["engines"][engine]
            same = "" if c["identical"] else " (output DIFFERS)"
            home = f" ({c['vs_local']:.2f} of local)" if "vs_local" in c else ""
            cells += [f"{c['best_s']:.3f}", f"{c['ratio']:.2f}{home}{same}"]
        table.add_row(*cells)
    Console().print(table)


def main(argv: Sequence[str] | None = None, prog: str = "python -m tender_ray.bench.io") -> int:
    """The command line; exit status 1 when an output differs from the native run's."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, metavar="MIB",
                        help="size of the generated input file")
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help="engines to compare, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    parser.add_argument("--no-ray", action="store_true",
                        help="skip the home I/O case between Ray machine actors")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    ns = parser.parse_args(argv)
    if ns.size < 1 or ns.repeat < 1:
        parser.error("--size and --repeat must be at least 1")
    engines = usable_engines(ns.engines)
    result = io_benchmark(ns.size, engines, ns.repeat, ray=not ns.no_ray)
    print_io_table(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(c["identical"] for r in result["rows"] for c in r["engines"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
