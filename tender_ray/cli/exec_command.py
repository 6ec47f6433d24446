"""The `exec` command: one program run as a Tender process the way a shell runs it, on an
embedded Ray or a running cluster, with exec's own failures told apart from its program's
statuses (125 its own, 126 cannot run, 127 not found), the signals of a terminal passed on,
and at the end what the program did that tender_ray could not (its unsupported calls) and
how it ended (a signal's note, as a shell gives it)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tender_ray.cli import status
from tender_ray.cli.status import UnreachableError
from tender_ray.config import CheckpointSpec, HostFiles, MachineConfig
from tender_ray.errors import MachineError, TenderError, UsageError
from tender_ray.migration.options import MigrationOptions
from tender_ray.resources.file_view import FileViewSpec

if TYPE_CHECKING:  # Ray loads only once a cluster is started or reached
    from tender_ray.cli.execute import SignalForwarder
    from tender_ray.cluster.cluster import Cluster


def _fail(message: str, code: int) -> int:
    _say(f"tender-ray: error: {message}")
    return code


def _engine_notice_text(requested: str, exact: bool = False) -> str:
    """Why the engine asked for cannot run here ("" when it can)."""
    from tender_ray.engines import resolve

    return resolve(requested, exact=exact)[1]


MEMORY_BUDGET_CAP = 16 << 30  # bytes of real memory exec's machines get together, at most
MEMORY_FLOOR_MIB = 512  # a machine gets at least this much (MachineConfig's own default)


def available_memory() -> int:
    """Bytes of memory this host can give without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_memory_mib(machines: int, available: int | None = None) -> int:
    """Real memory per machine when `--memory-mib` is not given: half of what this host
    has available (at most 16 GiB), shared among the machines, so that what runs natively
    here runs under exec too, and a process's frames on every machine it visited (held
    for reuse) still fit together. Frames are taken lazily: the size costs nothing until
    touched."""
    budget = min((available_memory() if available is None else available) // 2,
                 MEMORY_BUDGET_CAP)
    return max(MEMORY_FLOOR_MIB, (budget // max(1, machines)) >> 20)


def _machine_configs(ns: argparse.Namespace) -> list[MachineConfig]:
    if ns.machines < 1:
        raise UsageError("--machines must be at least 1")
    memory_mib = ns.memory_mib if ns.memory_mib is not None else default_memory_mib(
        ns.machines)
    every = getattr(ns, "checkpoint_every", None)
    if every is not None and every <= 0:
        raise UsageError("--checkpoint-every must be a positive number of seconds")
    checkpoint = CheckpointSpec(every=every) if every is not None else None
    names = [f"m{i}" for i in range(ns.machines)]
    return [MachineConfig(name=name, computations=ns.computations,
                          memory_mib=memory_mib, quantum_us=ns.quantum_us,
                          quantum_instructions=ns.exact, engine=ns.engine,
                          checkpoint=checkpoint, host_files=_host_files(ns, name, names))
            for name in names]


def _host_files(ns: argparse.Namespace, name: str, names: list[str]) -> HostFiles:
    """Machine `name`'s host files: its own, or with `--host-files home` none but on the
    machine the program starts on (its home, which serves the others its file calls)."""
    if getattr(ns, "host_files", "all") != "home":
        return HostFiles.NODE
    home = ns.machine if getattr(ns, "machine", None) is not None else names[0]
    return HostFiles.NODE if name == home else HostFiles.NONE


def run_exec(ns: argparse.Namespace, options: MigrationOptions) -> int:
    """`exec`, with its own failures kept apart from the statuses its program exits with;
    `options` are the migrations' (from --transfer, --no-reuse, --move-all)."""
    from tender_ray.cli.execute import (
        ClusterStoppedError,
        Interrupted,
        ProgramNotFoundError,
        SignalForwarder,
    )
    from tender_ray.errors import BadProgramError

    signals = SignalForwarder()
    signals.install()  # from the start: Ctrl-C while Ray starts stops exec cleanly too
    try:
        return _exec(ns, signals, options)
    except Interrupted as exc:
        from tender_ray.abi.linux import signal_name

        if exc.twice:
            _say(f"tender-ray: interrupted twice: stopped process {exc.pid} and what exec "
                 "started")
        else:
            _say(f"tender-ray: stopped by {signal_name(exc.signum)} before the program "
                 "started")
        return status.SIGNAL_BASE + exc.signum
    except ProgramNotFoundError as exc:
        return _fail(str(exc), status.NOT_FOUND)
    except BadProgramError as exc:
        return _fail(str(exc), status.CANNOT_RUN)
    except (UsageError, UnreachableError) as exc:
        return _fail(str(exc), status.EXEC_FAILED)
    except ClusterStoppedError as exc:
        _say(f"tender-ray: {exc}")
        return status.EXEC_FAILED
    except MachineError as exc:
        _say(f"tender-ray: machine failure: {exc}")
        return status.EXEC_FAILED
    except TenderError as exc:
        _say(f"tender-ray: {exc}")
        return status.EXEC_FAILED
    except BrokenPipeError:
        return status.SIGNAL_BASE + 13  # exec's own output went, as a program's would (141)
    except ConnectionError:  # ray.init's way of saying nobody answers there
        return _fail(str(status.unreachable(ns.address)), status.EXEC_FAILED)
    except Exception as exc:  # Ray's own failures (a cluster lost under us): one line
        if os.environ.get("TENDER_LOG_LEVEL", "").lower() == "debug":
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        return _fail(f"{type(exc).__name__}: {first} (`--log-level debug` shows where)",
                     status.EXEC_FAILED)
    finally:
        signals.restore()


def _say(line: str) -> None:
    """One line on stderr; nothing when nobody reads it any more."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        discard(2)


def discard(fd: int) -> None:
    """The reader of `fd` (1 or 2) has gone: what is still buffered for it, and anything
    written later, goes nowhere (instead of failing again when Python flushes at exit)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _exec(ns: argparse.Namespace, signals: SignalForwarder, options: MigrationOptions
          ) -> int:
    import time as _time

    from pydantic import ValidationError

    from tender_ray.cli.execute import execute, resolve_program, stream_identity

    # Where exec's seconds go, logged at info (`bench start` reads it): each step's length.
    phases: dict[str, float] = {}
    mark = [_time.monotonic()]

    def step(name: str) -> None:
        now = _time.monotonic()
        phases[name] = round(now - mark[0], 4)
        mark[0] = now

    program = resolve_program(ns.program, ns.args, path_env=os.environ.get("PATH"),
                              root=ns.root)  # before Ray starts: a bad program fails fast
    try:
        configs = _machine_configs(ns)
    except ValidationError as exc:
        raise UsageError(f"bad option: {exc.errors()[0]['loc'][0]}: "
                         f"{exc.errors()[0]['msg']}") from None
    if ns.migrate_every is not None and ns.migrate_every <= 0:
        raise UsageError("--migrate-every must be a positive number of seconds")
    names = [c.name for c in configs]
    if ns.address is None and ns.machine is not None and ns.machine not in names:
        # the machines of an embedded Ray are known before it starts: say so at once
        raise UsageError(f"--machine {ns.machine}: no such machine in the cluster; the "
                         f"machines are {', '.join(names)}")
    out = sys.stdout.buffer
    err = sys.stderr.buffer

    def sink(fd: int, data: bytes) -> None:
        stream = out if fd == 1 else err
        try:
            stream.write(data)
            stream.flush()
        except BrokenPipeError:
            discard(fd)
            raise

    tmp = ""
    # The engine's self-check (a traced probe) runs while Ray starts; its notice comes after.
    notices: list[str] = []
    checking = threading.Thread(target=lambda: notices.append(
        _engine_notice_text(ns.engine, exact=ns.exact is not None)), daemon=True)
    checking.start()
    step("check")
    attached = _attach_up(ns.address)
    if attached is not None:
        cluster = attached
    else:
        status.check_reachable(ns.address)
        where = "an embedded Ray" if ns.address is None else f"Ray at {ns.address}"
        with status.notice_if_slow(f"tender-ray: starting {where} ..."):
            cluster = _start_cluster(ns, step)
    from tender_ray import logs  # loaded meanwhile

    step("cluster" if "ray" in phases else "ray")  # an embedded Ray's start is marked apart
    signals.install()  # again: ray.init puts a SIGTERM handler of its own
    checking.join()
    if notices and notices[0]:
        _say(f"tender-ray: notice: {notices[0]}")
    try:
        if attached is None:
            with status.notice_if_slow(f"tender-ray: starting {len(configs)} machine"
                                       f"{'s' if len(configs) > 1 else ''} ..."):
                cluster.add_machines(configs)
        elif getattr(ns, "host_files", "all") == "home":
            raise UsageError("--host-files home: the machines of `tender-ray up` keep the host "
                             "files they were started with; run exec without --address to "
                             "have it start machines of its own")
        step("machines")
        if ns.machine is not None and ns.machine not in cluster.machines:
            raise UsageError(f"--machine {ns.machine}: no such machine in the cluster; the "
                             f"machines are {', '.join(cluster.machines)}")
        tmp = tempfile.mkdtemp(prefix="tender-tmp-")  # the run's private /tmp
        files = FileViewSpec(root=ns.root, cwd=os.getcwd(),
                             writable=tuple(ns.writable) if ns.writable else None, tmp=tmp,
                             stdio=tuple(stream_identity(fd) for fd in (0, 1, 2)))
        result = execute(cluster, ns.program, ns.args, _environment(), machine=ns.machine,
                         sink=sink, migrate_every=ns.migrate_every, options=options,
                         files=files, stdin_fd=0, program=program, signals=signals)
        step("program")
    finally:
        if attached is not None:
            cluster.forget()  # the machines belong to `up`
        cluster.shutdown(quick=True)  # an embedded Ray takes its machines along
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    step("shutdown")
    logs.get("exec").info("exec phases", **phases)
    if ns.stats:
        Path(ns.stats).write_text(json.dumps(result.stats(), indent=2) + "\n")
    unsupported = unsupported_message(result.unsupported)
    if unsupported:
        _say(unsupported)
    killed = killed_message(result.pid, result.exit_status, result.exit_reason)
    if killed:
        _say(killed)
    sizes = {c.name: c.memory_mib for c in configs} if attached is None else {}
    short = memory_message(result.exit_status, result.exit_reason, result.machine,
                           sizes.get(result.machine))
    if short:
        _say(short)
    return result.exit_status


def _load() -> None:
    """Load what exec needs of its own once Ray runs (the Ray layer, the kernel's machine for
    the machine actors' class, structlog): in a thread while Ray starts, whose processes
    leave the driver waiting. A failure here is the main thread's to meet and report when it
    imports the same."""
    with contextlib.suppress(BaseException):
        from tender_ray import logs
        from tender_ray.cluster import cluster

        logs.get("exec")
        del cluster


def _start_cluster(ns: argparse.Namespace, step: Callable[[str], None]) -> Cluster:
    """The Cluster exec's program runs on: an embedded Ray it starts (`--address` not given)
    or the Ray at `--address`, with exec's own modules loading while Ray starts. `step`
    marks where the time went: `ray` (Ray's start), `loading` (what the loading still took
    once Ray ran)."""
    embedded = None
    if ns.address is None:
        from tender_ray.cluster.embedded import EmbeddedRay  # Ray only

        loading = threading.Thread(target=_load, name="load", daemon=True)
        loading.start()
        embedded = EmbeddedRay.start(num_cpus=max(2, ns.machines))
        step("ray")
    try:
        if embedded is not None:
            loading.join()
            step("loading")
        from tender_ray.cluster.cluster import Cluster

        return Cluster(ns.address, num_cpus=max(2, ns.machines),
                       prefix="" if ns.address is None else f"exec-{os.getpid()}-",
                       embedded=embedded)
    except BaseException:
        if embedded is not None:  # stopped before a Cluster owned it: none of it stays
            embedded.abandon()
        raise


def memory_message(exit_status: int, exit_reason: str, machine: str,
                   memory_mib: int | None) -> str:
    """What to do when the program was killed for want of real memory on `machine`
    (`memory_mib` its size, None when exec did not start it); "" otherwise."""
    if exit_status != status.SIGNAL_BASE + 9 or "out of" not in exit_reason \
            or "memory" not in exit_reason:
        return ""
    size = f" its {memory_mib} MiB of" if memory_mib is not None else ""
    return (f"tender-ray: machine {machine} ran out of{size} real memory: run exec with a "
            "larger --memory-mib MIB (per machine)")


def unsupported_message(unsupported: dict[str, int]) -> str:
    """One line naming the system calls the program made that tender_ray does not support,
    most frequent first, with how often; "" when there were none."""
    if not unsupported:
        return ""
    calls = sorted(unsupported.items(), key=lambda kv: (-kv[1], kv[0]))
    return ("tender-ray: the program made system calls tender_ray does not support: "
            + ", ".join(f"{name}: {count}" for name, count in calls))


def killed_message(pid: int, exit_status: int, exit_reason: str) -> str:
    """`tender-ray: process 1001 killed by SIGSEGV (...)` for a guest a signal ended (what a
    shell says natively), "" for one that exited: the status alone (128+N) says too little."""
    from tender_ray.abi.linux import signal_name

    if exit_reason == "exited" or exit_status <= status.SIGNAL_BASE:
        return ""
    if exit_status == status.SIGNAL_BASE + 13:
        return ""  # SIGPIPE: its reader went (`| head`), which shells do not report either
    name = signal_name(exit_status - status.SIGNAL_BASE)
    # The machine's reason says where ("... at 0x401234") or who sent it; keep what it adds.
    detail = exit_reason.removeprefix(f"killed by signal {exit_status - status.SIGNAL_BASE}")
    detail = detail.removeprefix(f"killed by {name}").strip()
    detail = detail.removeprefix(f"({name})").strip()  # the kernel names it too
    return f"tender-ray: process {pid} killed by {name}" + (f" ({detail})" if detail else "")


# The cluster of `up` a warm driver of the exec server joined before its client came
# (exec_server.py): (its address, the attached Cluster), taken by the one exec it runs.
_warm: tuple[str, Cluster] | None = None


def use_warm(address: str, cluster: Cluster) -> None:
    """Have the next exec joining the cluster of `up` at `address` take `cluster`, already
    attached, instead of joining it again."""
    global _warm
    _warm = (address, cluster)


def _attach_up(address: str | None) -> Cluster | None:
    """The cluster `tender-ray up` started, when `--address` names it; else None."""
    global _warm
    if address is None:
        return None
    from tender_ray.cli.operate import ClusterState, connect, state_path

    if not state_path().exists():
        return None
    state = ClusterState.load()
    if address != state.address:
        return None
    if _warm is not None and _warm[0] == address:
        cluster = _warm[1]
        _warm = None
        return cluster
    cluster, _ = connect(state, exporter=False)
    return cluster


def _environment() -> list[str]:
    """exec's environment, with TMPDIR naming the run's private /tmp when it names none."""
    env = [f"{k}={v}" for k, v in os.environ.items()]
    return env if "TMPDIR" in os.environ else [*env, "TMPDIR=/tmp"]
