"""`tender-ray`: run programs as Tender processes, migrate them, and run scenarios."""

from __future__ import annotations

import argparse
import enum
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tender_ray.cli import command_line, status
from tender_ray.cli.names import describe_phases
from tender_ray.cli.status import UnreachableError
from tender_ray.config import MachineConfig
from tender_ray.errors import MachineError, TenderError, UsageError
from tender_ray.migration.options import MigrationOptions, Resources, Transfer
from tender_ray.resources.file_view import FileViewSpec

if TYPE_CHECKING:  # Ray loads only with the commands that start or reach a cluster
    from tender_ray.balancing.state import DrainReport

ADDRESS_HELP = ("a Ray cluster to join (host:port, or auto) instead of starting an embedded "
                "one (default: $RAY_ADDRESS)")


def _fail(message: str, code: int = status.USAGE) -> int:
    print(f"tender-ray: error: {message}", file=sys.stderr)
    return code


_unreachable = status.unreachable


# The benchmarks `tender-ray bench` runs: each module's own `main(argv, prog)`.
BENCHMARKS = {"engine": "tender_ray.bench.engine", "migration": "tender_ray.bench.migration",
              "policy": "tender_ray.bench.policy", "chaos": "tender_ray.bench.chaos",
              "churn": "tender_ray.bench.churn", "io": "tender_ray.bench.io",
              "vs-ray": "tender_ray.bench.vs_ray", "start": "tender_ray.bench.start",
              "precopy": "tender_ray.bench.precopy",
              "trees": "tender_ray.bench.trees"}


def _setting(parser: argparse.ArgumentParser, flag: str, field: str, metavar: str = "",
             dest: str = "") -> None:
    """An option for MachineConfig's `field`: its default, its description and (for an enum)
    its choices are the model's, so the command line cannot drift from what a machine
    takes."""
    info = MachineConfig.model_fields[field]
    default = info.default
    kind: dict[str, Any] = {"type": int, "metavar": metavar}
    if isinstance(default, enum.Enum):
        kind = {"choices": [e.value for e in type(default)]}
        default = default.value
    shown = "" if default is None else f" (default {default})"
    parser.add_argument(flag, dest=dest or field, default=default,
                        help=f"{info.description}, per machine{shown}", **kind)


def _machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machines", type=int, default=1, metavar="N",
                        help="machines (Ray actors) to start (default 1)")
    _setting(parser, "--computations", "computations", "N")
    _setting(parser, "--memory-mib", "memory_mib", "MIB")
    _setting(parser, "--quantum-us", "quantum_us", "US")
    _setting(parser, "--exact", "quantum_instructions", "INSTRUCTIONS", dest="exact")
    parser.add_argument("--address", default=None, metavar="ADDRESS", help=ADDRESS_HELP)
    _setting(parser, "--engine", "engine")


def _migration_options(parser: argparse.ArgumentParser) -> None:
    default = MigrationOptions.transfer.value
    parser.add_argument("--transfer", choices=[t.value for t in Transfer], default=default,
                        help=f"how pages travel: dsm (object store, memory to memory) or "
                             f"plate (files on a shared plate, NFS-like); default {default}")
    parser.add_argument("--no-reuse", action="store_true",
                        help="create and delete resources for every migration instead of "
                             "taking pre-created ones and holding deleted ones")
    parser.add_argument("--move-all", action="store_true",
                        help="move every resource (program image and plate contents too) and "
                             "reload the text from the plate, instead of only what must move")


def _options(ns: argparse.Namespace) -> MigrationOptions:
    return MigrationOptions(transfer=Transfer(ns.transfer), reuse=not ns.no_reuse,
                            resources=Resources.ALL if ns.move_all else Resources.NEEDED,
                            mode=getattr(ns, "migration_mode", MigrationOptions.mode))


def _mode_option(parser: argparse.ArgumentParser, flag: str) -> None:
    from tender_ray.cli.operate import parse_migration_mode

    parser.add_argument(flag, dest="migration_mode", type=parse_migration_mode,
                        default=MigrationOptions.mode, metavar="MODE",
                        help="stop (stop-and-copy), precopy (copy while it runs, then freeze "
                             "for the rest) or auto (by its size and dirty rate); default "
                             "stop")


def _metrics_options(parser: argparse.ArgumentParser, host: bool = False) -> None:
    from tender_ray.metrics.collector import DEFAULT_HOST, DEFAULT_PORT

    parser.add_argument("--metrics-port", type=int, default=DEFAULT_PORT, metavar="PORT",
                        help=f"serve Prometheus metrics of every machine on this port "
                             f"(default {DEFAULT_PORT}; 0 picks a free one)")
    if host:
        parser.add_argument("--metrics-host", default=DEFAULT_HOST, metavar="HOST",
                            help=f"address the metrics endpoint binds (default "
                                 f"{DEFAULT_HOST})")
    parser.add_argument("--no-metrics", action="store_true",
                        help="serve no metrics")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `command` "exec", only exec's (the same top-level
    options, exec's same options and messages), so that exec on a running cluster does not
    import what only other commands' options need before it hands its program over."""
    parser = argparse.ArgumentParser(
        prog="tender-ray",
        description="Tender's process migration on Ray: x86-64 Linux programs (static or "
                    "dynamically linked, and #! scripts) run as Tender processes on machine "
                    "actors and move between them.")
    parser.add_argument("--log-format", choices=["console", "json"], default=None,
                        help="structured logs as console lines or JSON, here and in every "
                             "actor (default: $TENDER_LOG_FORMAT, else console)")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        choices=["debug", "info", "warning", "error"],
                        help="log level (default: $TENDER_LOG_LEVEL, else warning; info logs "
                             "every migration phase)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do; `tender-ray COMMAND --help` for its options")
    p = sub.add_parser(
        "exec", help="run one program as a Tender process",
        description="Start a cluster of machine actors (an embedded local Ray unless "
                    "--address is given), run PROGRAM as a Tender process, forward its "
                    "stdout and stderr and the signals a terminal sends (Ctrl-C, SIGTERM, "
                    "SIGHUP, SIGQUIT, SIGUSR1/2, SIGWINCH; Ctrl-C twice within 2 s stops "
                    "exec and what it started), and exit with its exit status. PROGRAM is "
                    "an x86-64 Linux executable or a #! script; a name without a slash is "
                    "looked up on PATH.",
        epilog="Exit status: the program's own; 128+N when signal N killed it (130: "
               "Ctrl-C, 141: its output's reader went away); 125 when exec itself failed "
               "(bad options, no cluster, a broken or stopped cluster); 126 when the "
               "program was found but cannot run; 127 when there is no such program.")
    _machine_options(p)
    for action in p._actions:  # exec sizes its machines' memory from the host's
        if action.dest == "memory_mib":
            action.default = None
            action.help = ("real memory, MiB, per machine (default: half the host's "
                           "available memory, at most 16 GiB, shared among the machines; "
                           "at least 512)")
    p.add_argument("--machine", default=None, metavar="NAME",
                   help="start the program on this machine of the cluster (default: the "
                        "first that takes it)")
    p.add_argument("--stats", metavar="FILE", help="write run statistics as JSON to FILE")
    _migration_options(p)
    _mode_option(p, "--migrate-mode")
    p.add_argument("--migrate-every", type=float, default=None, metavar="SECONDS",
                   help="while the program runs, migrate it round-robin to the next machine "
                        "at this interval")
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="SECONDS",
                   help="checkpoint the process at this interval (to the cluster's shared "
                        "plate); its output is forwarded as each checkpoint covers it")
    p.add_argument("--root", default=FileViewSpec.root, metavar="DIR",
                   help="the host directory the program sees as / (default: %(default)s)")
    p.add_argument("--writable", action="append", default=None, metavar="DIR",
                   help="a directory (as the program sees it) it may write under; repeatable "
                        "(default: the current directory)")
    p.add_argument("--host-files", choices=["all", "home"], default="all",
                   help="which of exec's machines read the host's files: all (default), or "
                        "home: only the one the program starts on; the others have none and "
                        "serve its file calls through it (host_files: none)")
    p.add_argument("program", metavar="PROGRAM",
                   help="x86-64 Linux program (static or dynamic) or #! script: a path, or a "
                        "name looked up on PATH")
    args = p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments passed to the program (optional; everything after PROGRAM "
                        "is the program's)")
    # argparse counts a REMAINDER as required and writes it as a bare "...": it is optional.
    args.required = False
    p.usage = (p.format_usage().removeprefix("usage: ").rstrip()
               .replace("PROGRAM ...", "PROGRAM [ARGS ...]"))
    if command == "exec":
        return parser
    from tender_ray.balancing.policies import Policy

    policies = command_line.policies()
    r = sub.add_parser(
        "run", help="run a load-balancing scenario (default: configs/laptop.yaml)",
        description="Run a scenario from configs/*.yaml: machines, arriving programs, a "
                    "balancer policy and timed events (drain, undrain, add or stop a machine), "
                    "with a live view; at the end a summary and a report directory with "
                    "report.json, load.png and timeline.png.")
    r.add_argument("scenario", nargs="?", default=None, metavar="SCENARIO",
                   help="scenario file (default: configs/laptop.yaml)")
    r.add_argument("--report", metavar="DIR", default=None,
                   help="report directory (default: reports/<scenario>-<time>)")
    r.add_argument("--address", default=None, metavar="ADDRESS", help=ADDRESS_HELP)
    r.add_argument("--policy", default=None, choices=policies,
                   help="override the scenario's balancer policy")
    r.add_argument("--compare", metavar="POLICIES", default=None,
                   help="run the scenario once per policy (comma-separated) and print one "
                        "table")
    r.add_argument("--no-live", action="store_true", help="plain log lines instead of the "
                                                          "live view")
    _metrics_options(r)
    u = sub.add_parser(
        "up", help="start a long-lived cluster of machines (detached actors)",
        description="Start machines as named detached Ray actors, and a balancer, on an "
                    "existing Ray cluster (--address) or on a Ray head started here on "
                    "127.0.0.1. `ps`, `migrate`, `drain`, `undrain`, `exec`, `top` act on it; "
                    "`down` stops what `up` started.")
    u.add_argument("--machines", type=int, default=3, metavar="N",
                   help="machines (detached Ray actors) to start, named m0, m1, ... "
                        "(default 3)")
    _setting(u, "--computations", "computations", "N")
    _setting(u, "--memory-mib", "memory_mib", "MIB")
    u.add_argument("--address", default=None, metavar="ADDRESS",
                   help="an existing Ray cluster to start the machines on instead of a Ray "
                        "head of our own on 127.0.0.1 (default: $RAY_ADDRESS)")
    u.add_argument("--policy", default=Policy.NONE.value, choices=policies,
                   help="balancer policy (default none: it only drains)")
    u.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the Ray head started here (default: the host's)")
    _metrics_options(u, host=True)
    t = sub.add_parser("top", help="live view of the running cluster",
                       description="Machines (load, run queue, frames free/used/held, "
                                   "draining), processes and where they run, and the last "
                                   "migrations with their phase times, redrawn in place.")
    t.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1)")
    t.add_argument("--once", action="store_true",
                   help="print one view and exit (also when stdout is not a terminal); "
                        "otherwise q or Ctrl-C quits")
    sub.add_parser("down", help="stop what `up` started",
                   description="Stop the machines, balancer and metrics exporter `up` "
                               "started, and the Ray head if `up` started one; nothing else. "
                               "With nothing up, says so and exits 0.")
    sub.add_parser("ps", help="processes of the running cluster and where they run",
                   description="One row per process of the cluster `up` started: pid, "
                               "name, machine, state, CPU and run seconds, migrations.")
    mg = sub.add_parser("migrate", help="migrate a process of the running cluster",
                        description="Move process PID to MACHINE now, and print how long "
                                    "each phase of the migration took.")
    mg.add_argument("pid", type=int, metavar="PID", help="the process to move (see `ps`)")
    mg.add_argument("machine", metavar="MACHINE", help="the machine to move it to (m0, ...)")
    _migration_options(mg)
    _mode_option(mg, "--mode")
    dr = sub.add_parser("drain", help="move every process off a machine, then keep it empty",
                        description="Cordon MACHINE (it takes no new processes) and have the "
                                    "balancer move every process off it; report each move, "
                                    "and, if processes are still there at the deadline, "
                                    "which and why (exit status 1).")
    dr.add_argument("machine", metavar="MACHINE", help="the machine to drain (m0, ...)")
    dr.add_argument("--deadline", type=float, default=60.0, metavar="SECONDS",
                    help="seconds to wait for the machine to be empty (default 60)")
    ck = sub.add_parser("checkpoint", help="checkpoint a process of the running cluster",
                        description="Write process PID's image to the cluster's shared plate "
                                    "now (only the pages changed since its last checkpoint), "
                                    "so that it restarts from there if its machine crashes; "
                                    "print what it cost.")
    ck.add_argument("pid", type=int, metavar="PID", help="the process (see `ps`)")
    kl = sub.add_parser("kill", help="send a signal to a process of the running cluster",
                        description="Send a signal (default SIGTERM, as kill(1)) to process "
                                    "PID of the cluster `up` started: its handler takes it, or "
                                    "its default action ends it (exit status 128+N); an "
                                    "`exec` following it exits so.")
    kl.add_argument("--signal", "-s", default="TERM", metavar="SIGNAL",
                    help="a number or a name: 9, KILL or SIGKILL (default TERM)")
    kl.add_argument("pid", type=int, metavar="PID", help="the process (see `ps`)")
    ud = sub.add_parser("undrain", help="let a drained machine take processes again")
    ud.add_argument("machine", metavar="MACHINE", help="the machine to uncordon (m0, ...)")
    b = sub.add_parser("bench", help="run a benchmark",
                       description="Benchmarks that report ratios measured side by side in "
                                   "one run: engine (run time under Tender against native, "
                                   "per workload) and migration (migration time against its "
                                   "lower bound, a Ray actor restore, and strategy against "
                                   "strategy) and policy (one balancing round over "
                                   "1,000 simulated machines, per policy). "
                                   "`tender-ray bench NAME --help` lists a "
                                   "benchmark's options; `python -m tender_ray.bench.NAME` "
                                   "runs the same.")
    b.add_argument("bench", nargs="?", choices=list(BENCHMARKS), metavar="BENCHMARK",
                   help=f"one of {', '.join(BENCHMARKS)}")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...",
                   help="the benchmark's own options")
    return parser


def cmd_bench(ns: argparse.Namespace) -> int:
    import importlib

    if ns.bench is None:
        raise UsageError(f"name a benchmark: {' or '.join(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[ns.bench])
    status: int = module.main(ns.bench_args, prog=f"tender-ray bench {ns.bench}")
    return status


def cmd_exec(ns: argparse.Namespace) -> int:
    from tender_ray.cli.exec_command import run_exec

    return run_exec(ns, _options(ns))


def default_scenario() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):  # here, the checkout
        candidate = base / "configs" / "laptop.yaml"
        if candidate.is_file():
            return candidate
    return Path("configs/laptop.yaml")


def cmd_run(ns: argparse.Namespace) -> int:
    import time as _time

    from tender_ray.cli.live import print_compare, print_summary
    from tender_ray.cli.scenario.model import read_scenario
    from tender_ray.cli.scenario.run import run_live

    path = Path(ns.scenario) if ns.scenario else default_scenario()
    read = read_scenario(path)
    status.check_reachable(ns.address)  # before the scenario starts, not minutes into it
    scenario, programs, problems = read.scenario, read.programs, read.problems
    if ns.compare:
        policies = [p.strip() for p in ns.compare.split(",") if p.strip()]
        known = command_line.policies()
        bad = [p for p in policies if p not in known]
        if bad or not policies:
            raise UsageError(f"--compare: unknown policies {bad}; choose from "
                             f"{', '.join(known)}")
        reports = []
        for i, policy in enumerate(policies):
            # A policy named again (to see the spread of its runs) gets its own directory.
            again = policies[:i].count(policy)
            suffix = f"-{again + 1}" if again else ""
            report_dir = Path(ns.report or "reports") / f"{scenario.name}-{policy}{suffix}"
            result = run_live(scenario, programs, address=ns.address, policy=policy,
                              problems=problems,
                              report_dir=report_dir, live=False,
                              metrics_port=None if ns.no_metrics else ns.metrics_port)
            reports.append(result.report)
        print_compare(reports)
        return status.OK if all(r.all_match_native for r in reports) else status.FAILED
    stamp = _time.strftime("%Y%m%d-%H%M%S")
    report_dir = Path(ns.report) if ns.report else Path("reports") / f"{scenario.name}-{stamp}"
    result = run_live(scenario, programs, address=ns.address, policy=ns.policy,
                      problems=problems,
                      report_dir=report_dir, live=not ns.no_live and sys.stdout.isatty(),
                      metrics_port=None if ns.no_metrics else ns.metrics_port)
    print_summary(result.report, report_dir)
    return status.OK if result.report.ok else status.FAILED


def cmd_up(ns: argparse.Namespace) -> int:
    from tender_ray.balancing.policies import BalancerParams, Policy
    from tender_ray.cli.operate import ClusterState, start_head, state_path, stop_head
    from tender_ray.cluster.cluster import Cluster

    if state_path().exists():
        raise UsageError(f"a cluster is already up ({state_path()}); `tender-ray down` first")
    if ns.machines < 1:
        raise UsageError("--machines must be at least 1")
    configs = [MachineConfig(name=f"m{i}", computations=ns.computations,
                             memory_mib=ns.memory_mib) for i in range(ns.machines)]
    head_pid = None
    address = ns.address
    if address is None:
        address, head_pid = start_head(ns.num_cpus or os.cpu_count() or 2, 512)
    shared = state_path().parent / "shared-plate"
    shared.mkdir(parents=True, exist_ok=True)
    try:
        status.check_reachable(address)
        try:
            cluster = Cluster(address, shared_plate=str(shared))
        except ConnectionError:
            raise _unreachable(address) from None
        for config in configs:
            cluster.add_machine(config, detached=True)
        # No driver follows an `up` cluster's machines: the balancer restarts a dead one's.
        cluster.start_balancer(BalancerParams(policy=Policy(ns.policy)), MigrationOptions(),
                               0.25, detached=True, restart_dead=True)
        metrics_port = None if ns.no_metrics else cluster.start_exporter(
            ns.metrics_port, ns.metrics_host, detached=True)
    except BaseException:
        if head_pid is not None:
            stop_head(head_pid)
        raise
    state = ClusterState(address=address, machines={c.name: i for i, c in enumerate(configs)},
                         shared_plate=str(shared), head_pid=head_pid,
                         metrics_port=metrics_port)
    state.save()
    cluster.forget()
    from tender_ray.cli.exec_server import start_for

    server = start_for(state)
    print(f"up: {len(configs)} machines ({', '.join(state.machines)}) on {address}"
          f"{' (Ray head started here, pid ' + str(head_pid) + ')' if head_pid else ''}; "
          f"state in {state_path()}")
    if metrics_port is not None:
        print(f"metrics: http://{ns.metrics_host}:{metrics_port}/metrics")
    print(f"attach: `ps`, `migrate`, `drain`, `undrain`, `top` and `down` find it by the state "
          f"file; `exec` and `run` with --address {address} (or --address auto, or "
          f"RAY_ADDRESS={address})")
    print(server)
    return status.OK


def cmd_down(ns: argparse.Namespace) -> int:
    import contextlib

    from tender_ray.cli.operate import ClusterState, connect, state_path, stop_head

    if not state_path().exists():
        print("down: nothing is running (no cluster started by `tender-ray up`)")
        return status.OK
    state = ClusterState.load()
    reached = False
    head = " and the Ray head" if state.head_pid else ""
    with status.notice_if_slow(f"down: stopping {len(state.machines)} machines{head} ...",
                               stream=sys.stdout, tty_only=False):
        if state.exec_server_pid is not None:
            from tender_ray.cli.exec_server import stop_server

            stop_server(state.exec_server_pid, state.exec_socket)
        with contextlib.suppress(Exception):  # whatever is left of it, the state file goes
            cluster, _ = connect(state)
            cluster.shutdown()
            reached = True
        if state.head_pid is not None:
            stop_head(state.head_pid)
    ClusterState.remove()
    if reached:
        print(f"down: stopped {len(state.machines)} machines{head}")
    else:  # say so: its machines went with it, nothing was there to stop
        print(f"down: no cluster answered at {state.address} (it had stopped); forgot it"
              f"{', stopped the Ray head' if head else ''}")
    return status.OK


def cmd_ps(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tender_ray.cli.operate import connect

    cluster, _ = connect()
    table = Table()
    for col in ("pid", "name", "machine", "state", "cpu s", "run s", "migrations"):
        table.add_column(col, justify="right" if col in ("pid", "cpu s", "run s",
                                                         "migrations") else "left")
    for name, result in sorted(cluster.list_all().items()):
        if isinstance(result, BaseException):
            table.add_row("-", "-", name, f"[red]unreachable: {result}[/red]", "", "", "")
            continue
        for p in result:
            table.add_row(str(p.pid), p.name, name, p.state, f"{p.cpu_seconds:.2f}",
                          f"{p.run_seconds:.1f}", str(len(p.migrations)))
    Console().print(table)
    return status.OK


def cmd_top(ns: argparse.Namespace) -> int:
    from tender_ray.cli.operate import connect
    from tender_ray.cli.top import run_top

    if ns.interval <= 0:
        raise UsageError("--interval must be a positive number of seconds")
    cluster, _ = connect()
    run_top(lambda: list(cluster.machines.values()), ns.interval,
            balancer=cluster.balancer_state, once=ns.once or not sys.stdout.isatty(),
            keys=sys.stdin if sys.stdin.isatty() else None)
    return status.OK


def cmd_migrate(ns: argparse.Namespace) -> int:
    from tender_ray.cli.operate import connect, find_process

    cluster, _ = connect()
    source = find_process(cluster, ns.pid)
    cluster.machine(ns.machine)  # an unknown destination fails here, clearly
    record = cluster.machine(source).migrate(ns.pid, ns.machine, _options(ns))
    phases = describe_phases(record.phases)
    print(f"migrated {ns.pid} {record.source} → {record.destination} in "
          f"{1000 * record.seconds:.1f} ms, {record.pages} pages ({phases})")
    rounds = f", {record.rounds} live rounds" if record.rounds else ""
    print(f"mode {record.mode}: frozen {1000 * record.freeze_seconds:.1f} ms{rounds}, "
          f"{record.bytes} bytes sent, {record.freeze_bytes} while frozen")
    return status.OK


def cmd_checkpoint(ns: argparse.Namespace) -> int:
    from tender_ray.cli.operate import connect, find_process

    cluster, _ = connect()
    record = cluster.machine(find_process(cluster, ns.pid)).checkpoint(ns.pid)
    kind = "full" if record.full else "incremental"
    print(f"checkpoint {record.seq} of {ns.pid} on {record.machine} ({kind}): "
          f"{record.pages_written} of {record.pages} pages, {record.bytes} bytes, frozen "
          f"{1000 * record.frozen_seconds:.1f} ms, {1000 * record.seconds:.1f} ms in all, "
          f"in {record.store}")
    return status.OK


def cmd_drain(ns: argparse.Namespace) -> int:
    from tender_ray.cli.operate import connect

    if ns.deadline <= 0:
        raise UsageError("--deadline must be a positive number of seconds")
    cluster, _ = connect()
    report = cluster.resolve_drain(cluster.drain_async(ns.machine, ns.deadline))
    for r in report.moved:
        print(f"  {r.pid} → {r.destination} in {1000 * r.seconds:.1f} ms")
    print(drain_summary(report))
    return status.OK if report.ok else status.FAILED


def drain_summary(report: DrainReport) -> str:
    """One line: what moved, what ended there by itself, and what was left and why."""
    line = f"drain of {report.machine}: {len(report.moved)} moved"
    if report.ended:
        line += f", {len(report.ended)} ended there"
    line += f" in {report.seconds:.2f} s"
    if not report.ok:
        pids = " ".join(str(p) for p in report.left)
        line += (f"; still there at the deadline ({report.deadline:g} s): "
                 f"{pids or 'unknown'}")
    if report.why:
        line += f" ({report.why})"
    return line


def cmd_kill(ns: argparse.Namespace) -> int:
    from tender_ray.abi.linux import signal_name
    from tender_ray.cli.operate import connect, parse_signal
    from tender_ray.errors import UnknownProcessError

    sig = parse_signal(ns.signal)
    cluster, _ = connect()
    for _ in range(3):  # a process moving meanwhile is asked for where it arrived
        handle = cluster.locate(ns.pid)
        try:
            info = handle.kill(ns.pid, sig)
            break
        except UnknownProcessError:
            continue
    else:
        raise UsageError(f"process {ns.pid} kept moving while being signalled; try again")
    what = f"signal {sig}" if sig > 31 else signal_name(sig) if sig else "signal 0"
    ended = f"; it ended: {info.exit_reason}" if info.state == "zombie" else ""
    print(f"kill: sent {what} to process {ns.pid} on {handle.name}{ended}")
    return status.OK


def cmd_undrain(ns: argparse.Namespace) -> int:
    from tender_ray.cli.operate import connect

    cluster, _ = connect()
    cluster.undrain(ns.machine)
    print(f"{ns.machine} takes processes again")
    return status.OK


def _configure_logs(ns: argparse.Namespace, here: bool = True) -> None:
    """The TENDER_LOG_* variables the actors configure their logs from (Ray workers inherit
    them, see Cluster.__init__), and, `here`, structlog for this process."""
    if ns.log_format:
        os.environ["TENDER_LOG_FORMAT"] = ns.log_format
    if ns.log_level:
        os.environ["TENDER_LOG_LEVEL"] = ns.log_level
    if here:
        from tender_ray import logs

        logs.configure(ns.log_format, ns.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser("exec" if command_line.command_of(words) == "exec" else None)
    try:
        ns = parser.parse_args(words)
    except SystemExit as exc:
        if exc.code == status.USAGE and "exec" in words and not any(
                w in words[:words.index("exec")] for w in ("-h", "--help")):
            # exec's own misuse must not read as its program's status 2
            raise SystemExit(status.EXEC_FAILED) from None
        raise
    if ns.command is None:
        parser.print_help()
        return status.USAGE
    if getattr(ns, "address", "") is None:
        # As Ray's own commands do: the flag first, then the environment.
        ns.address = os.environ.get("RAY_ADDRESS") or None
    _configure_logs(ns, here=False)  # a served exec loads structlog only for its own line
    if ns.command == "exec" and ns.address is not None:
        # A cluster of `up` keeps a warm driver: hand it the whole command (cli/exec_server.py).
        from tender_ray.cli.exec_server import log_client_phases, through_server

        served = through_server(ns.address, words, log_client_phases)
        if served is not None:
            if argv is None:  # the command itself: nothing of its own left to tear down
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(served)  # skips ~0.3 s of interpreter teardown on every exec
            return served
    _configure_logs(ns)
    if getattr(ns, "address", None) == "auto":
        from tender_ray.cli.operate import resolve_auto

        try:
            ns.address = resolve_auto()
        except (UsageError, UnreachableError) as exc:
            return _fail(str(exc), status.EXEC_FAILED if ns.command == "exec"
                         else status.UNREACHABLE)
    handlers = {"exec": cmd_exec, "bench": cmd_bench, "run": cmd_run, "up": cmd_up,
                "down": cmd_down, "ps": cmd_ps, "migrate": cmd_migrate, "drain": cmd_drain,
                "undrain": cmd_undrain, "top": cmd_top, "checkpoint": cmd_checkpoint,
                "kill": cmd_kill}
    try:
        return handlers[ns.command](ns)
    except UsageError as exc:
        return _fail(str(exc))
    except UnreachableError as exc:
        return _fail(str(exc), status.UNREACHABLE)
    except MachineError as exc:
        print(f"tender-ray: machine failure: {exc}", file=sys.stderr)
        return status.UNREACHABLE
    except TenderError as exc:
        print(f"tender-ray: {exc}", file=sys.stderr)
        return status.FAILED
    except BrokenPipeError:  # `tender-ray ps | head`: the reader went; so does the command
        from tender_ray.cli.exec_command import discard

        discard(1)
        return status.SIGNAL_BASE + 13
    except ConnectionError:
        # Ray found no cluster where a command (a scenario, a benchmark) was pointed.
        return _fail(str(_unreachable(getattr(ns, "address", None))), status.UNREACHABLE)
    except KeyboardInterrupt:
        return status.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
