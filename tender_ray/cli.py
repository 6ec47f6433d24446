"""`tender-ray`: run programs as Tender processes, migrate them, and run scenarios."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MachineError, TenderError, UsageError

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"tender-ray: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machines", type=int, default=1, metavar="N",
                        help="machines (Ray actors) to start (default 1)")
    parser.add_argument("--computations", type=int, default=1, metavar="N",
                        help="computations (processor slots) per machine (default 1)")
    parser.add_argument("--memory-mib", type=int, default=512, metavar="MIB",
                        help="real memory per machine in MiB (default 512)")
    parser.add_argument("--quantum-us", type=int, default=5000, metavar="US",
                        help="time slice in microseconds (default 5000)")
    parser.add_argument("--exact", type=int, default=None, metavar="INSTRUCTIONS",
                        help="exact quanta of this many instructions instead of timed ones "
                             "(deterministic preemption, slower)")
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster at this address instead of "
                             "starting an embedded one")
    parser.add_argument("--engine", choices=["auto", "native", "emulated"], default="auto",
                        help="what runs the program: native (a traced host process, Linux "
                             "x86-64), emulated (the Unicorn CPU), or auto (native where it "
                             "works here; default)")


def _migration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transfer", choices=["dsm", "plate"], default="dsm",
                        help="how pages travel: dsm (object store, memory to memory, default) "
                             "or plate (files on a shared plate, NFS-like)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="create and delete resources for every migration instead of "
                             "taking pre-created ones and holding deleted ones")
    parser.add_argument("--move-all", action="store_true",
                        help="move every resource (program image and plate contents too) and "
                             "reload the text from the plate, instead of only what must move")


def _options(ns: argparse.Namespace) -> Any:
    from .migration import MigrationOptions, Resources, Transfer

    return MigrationOptions(transfer=Transfer(ns.transfer), reuse=not ns.no_reuse,
                            resources=Resources.ALL if ns.move_all else Resources.NEEDED)


def _metrics_options(parser: argparse.ArgumentParser, host: bool = False) -> None:
    from .metrics import DEFAULT_HOST, DEFAULT_PORT

    parser.add_argument("--metrics-port", type=int, default=DEFAULT_PORT, metavar="PORT",
                        help=f"serve Prometheus metrics of every machine on this port "
                             f"(default {DEFAULT_PORT}; 0 picks a free one)")
    if host:
        parser.add_argument("--metrics-host", default=DEFAULT_HOST, metavar="HOST",
                            help=f"address the metrics endpoint binds (default "
                                 f"{DEFAULT_HOST})")
    parser.add_argument("--no-metrics", action="store_true",
                        help="serve no metrics")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tender-ray",
        description="Tender's process migration on Ray: static x86-64 Linux programs run as "
                    "Tender processes on machine actors and move between them.")
    parser.add_argument("--log-format", choices=["console", "json"], default=None,
                        help="structured logs as console lines or JSON, here and in every "
                             "actor (default: $TENDER_LOG_FORMAT, else console)")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        choices=["debug", "info", "warning", "error"],
                        help="log level (default: $TENDER_LOG_LEVEL, else warning; info logs "
                             "every migration phase)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "exec", help="run one program as a Tender process",
        description="Start a cluster of machine actors (an embedded local Ray unless "
                    "--address is given), run PROGRAM (a static x86-64 ELF) as a Tender "
                    "process, forward its stdout and stderr, and exit with its exit status "
                    "(128+signal when it faults).")
    _machine_options(p)
    p.add_argument("--stats", metavar="FILE", help="write run statistics as JSON to FILE")
    _migration_options(p)
    p.add_argument("--migrate-every", type=float, default=None, metavar="SECONDS",
                   help="while the program runs, migrate it round-robin to the next machine "
                        "at this interval")
    p.add_argument("program", metavar="PROGRAM", help="static x86-64 Linux executable")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments passed to the program")
    r = sub.add_parser(
        "run", help="run a load-balancing scenario (default: configs/laptop.yaml)",
        description="Run a scenario from configs/*.yaml: machines, arriving programs, a "
                    "balancer policy and timed events (drain, undrain, add or stop a machine), "
                    "with a live view; at the end a summary and a report directory with "
                    "report.json and load.png.")
    r.add_argument("scenario", nargs="?", default=None, metavar="SCENARIO",
                   help="scenario file (default: configs/laptop.yaml)")
    r.add_argument("--report", metavar="DIR", default=None,
                   help="report directory (default: reports/<scenario>-<time>)")
    r.add_argument("--address", default=None,
                   help="run on an existing Ray cluster instead of an embedded one")
    r.add_argument("--policy", default=None,
                   choices=["none", "threshold", "greedy", "age", "cost"],
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
    u.add_argument("--machines", type=int, default=3, metavar="N")
    u.add_argument("--computations", type=int, default=1, metavar="N")
    u.add_argument("--memory-mib", type=int, default=512, metavar="MIB")
    u.add_argument("--address", default=None, help="existing Ray cluster to join")
    u.add_argument("--policy", default="none",
                   choices=["none", "threshold", "greedy", "age", "cost"],
                   help="balancer policy (default none: it only drains)")
    u.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the Ray head started here (default: the host's)")
    _metrics_options(u, host=True)
    t = sub.add_parser("top", help="live view of the running cluster",
                       description="Machines (load, run queue, frames free/used/held, "
                                   "draining), processes and where they run, and the last "
                                   "migrations with their phase times, redrawn in place.")
    t.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1)")
    t.add_argument("--once", action="store_true", help="print one view and exit")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("ps", help="processes of the running cluster and where they run")
    mg = sub.add_parser("migrate", help="migrate a process of the running cluster")
    mg.add_argument("pid", type=int)
    mg.add_argument("machine")
    _migration_options(mg)
    dr = sub.add_parser("drain", help="move every process off a machine, then keep it empty")
    dr.add_argument("machine")
    dr.add_argument("--deadline", type=float, default=60.0, metavar="SECONDS")
    ud = sub.add_parser("undrain", help="let a drained machine take processes again")
    ud.add_argument("machine")
    b = sub.add_parser("bench", help="run a benchmark",
                       description="Benchmarks that report ratios measured side by side in "
                                   "one run.")
    bsub = b.add_subparsers(dest="bench", metavar="BENCHMARK")
    bm = bsub.add_parser("migration", help="migration time against its lower bound, a Ray "
                                          "actor restore, and strategy against strategy")
    bm.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bm.add_argument("--sizes", default="1,16,128", help="MiB touched, comma-separated")
    bm.add_argument("--repeats", type=int, default=5, help="migrations per strategy and size")
    be = bsub.add_parser("engine", help="run time under Tender against native, per workload")
    be.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    be.add_argument("--repeat", type=int, default=3, help="runs per workload (best is kept)")
    for bp in (bm, be):
        bp.add_argument("--engines", default="native,emulated",
                        help="engines to measure side by side (comma-separated; an engine "
                             "that cannot run here is skipped with a notice)")
    return parser


def cmd_bench(ns: argparse.Namespace) -> int:
    result: Any
    if ns.bench == "migration":
        from .migration_bench import migration_benchmark, print_migration_table

        try:
            sizes = tuple(int(x) for x in ns.sizes.split(","))
        except ValueError:
            raise UsageError(f"--sizes must be comma-separated MiB, got {ns.sizes!r}") from None
        engines = _engines(ns.engines)
        result = {}
        for engine in engines:
            result[engine] = migration_benchmark(sizes, repeats=ns.repeats, engine=engine)
            print(f"engine: {engine}")
            print_migration_table(result[engine])
    elif ns.bench == "engine":
        from .benchmarks import compare_engines, print_engine_comparison

        result = compare_engines(engines=_engines(ns.engines), repeat=ns.repeat)
        print_engine_comparison(result)
    else:
        raise UsageError("name a benchmark: migration or engine")
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _engine_notice(requested: str, exact: bool = False) -> None:
    """Say once, on stderr, when the engine asked for cannot run here and why."""
    from .engine import resolve

    _, notice = resolve(requested, exact=exact)
    if notice:
        print(f"tender-ray: notice: {notice}", file=sys.stderr)


def _engines(spec: str) -> list[str]:
    from .engine import resolve

    engines = [e.strip() for e in spec.split(",") if e.strip()]
    bad = [e for e in engines if e not in ("native", "emulated")]
    if bad or not engines:
        raise UsageError(f"--engines: unknown engines {bad}; choose native and/or emulated")
    usable = []
    for e in engines:
        got, notice = resolve(e)
        if got != e:
            print(f"tender-ray: {notice}; skipping the {e} engine", file=sys.stderr)
            continue
        usable.append(e)
    return usable


def _machine_configs(ns: argparse.Namespace) -> list[Any]:
    from .config import MachineConfig

    if ns.machines < 1:
        raise UsageError("--machines must be at least 1")
    return [MachineConfig(name=f"m{i}", computations=ns.computations,
                          memory_mib=ns.memory_mib, quantum_us=ns.quantum_us,
                          quantum_instructions=ns.exact, engine=ns.engine)
            for i in range(ns.machines)]


def cmd_exec(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .cluster import Cluster
    from .runner import execute, read_program

    try:
        read_program(ns.program)  # fail fast, before starting Ray
        configs = _machine_configs(ns)
        _engine_notice(ns.engine, exact=ns.exact is not None)
    except ValidationError as exc:
        return _fail(f"bad option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
    except UsageError as exc:
        return _fail(str(exc))

    out = sys.stdout.buffer
    err = sys.stderr.buffer

    def sink(fd: int, data: bytes) -> None:
        stream = out if fd == 1 else err
        stream.write(data)
        stream.flush()

    attached = _attach_up(ns.address)
    if attached is not None:
        cluster = attached
    else:
        cluster = Cluster(ns.address, num_cpus=max(2, ns.machines),
                          prefix="" if ns.address is None else f"exec-{os.getpid()}-")
    try:
        if attached is None:
            for config in configs:
                cluster.add_machine(config)
        if ns.migrate_every is not None and ns.migrate_every <= 0:
            raise UsageError("--migrate-every must be a positive number of seconds")
        result = execute(cluster, ns.program, ns.args, _environment(), sink=sink,
                         migrate_every=ns.migrate_every, options=_options(ns))
    finally:
        if attached is not None:
            cluster.forget()  # the machines belong to `up`
        cluster.shutdown()
    if ns.stats:
        Path(ns.stats).write_text(json.dumps(result.stats(), indent=2) + "\n")
    return result.exit_status


def default_scenario() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base / "configs" / "laptop.yaml"
        if candidate.is_file():
            return candidate
    return Path("configs/laptop.yaml")


def cmd_run(ns: argparse.Namespace) -> int:
    import time as _time

    from .config import read_scenario
    from .live import print_compare, print_summary, run_live

    path = Path(ns.scenario) if ns.scenario else default_scenario()
    read = read_scenario(path)
    scenario, programs, problems = read.scenario, read.programs, read.problems
    if ns.compare:
        policies = [p.strip() for p in ns.compare.split(",") if p.strip()]
        bad = [p for p in policies if p not in ("none", "threshold", "greedy", "age", "cost")]
        if bad or not policies:
            raise UsageError(f"--compare: unknown policies {bad}; choose from none, "
                             "threshold, greedy, age, cost")
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
        return 0 if all(r["all_match_native"] for r in reports) else 1
    stamp = _time.strftime("%Y%m%d-%H%M%S")
    report_dir = Path(ns.report) if ns.report else Path("reports") / f"{scenario.name}-{stamp}"
    result = run_live(scenario, programs, address=ns.address, policy=ns.policy,
                      problems=problems,
                      report_dir=report_dir, live=not ns.no_live and sys.stdout.isatty(),
                      metrics_port=None if ns.no_metrics else ns.metrics_port)
    print_summary(result.report, report_dir)
    report = result.report
    ok = (report["all_match_native"] and not report["lost"] and not report["not_started"]
          and not report["events_failed"])
    return 0 if ok else 1


def cmd_up(ns: argparse.Namespace) -> int:
    from .balancer import BalancerParams, Policy
    from .cluster import Cluster
    from .config import MachineConfig
    from .migration import MigrationOptions
    from .operate import ClusterState, start_head, state_path, stop_head

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
        cluster = Cluster(address, shared_plate=str(shared))
        for config in configs:
            cluster.add_machine(config, detached=True)
        cluster.start_balancer(BalancerParams(policy=Policy(ns.policy)), MigrationOptions(),
                               0.25, detached=True)
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
    print(f"up: {len(configs)} machines ({', '.join(state.machines)}) on {address}"
          f"{' (Ray head started here, pid ' + str(head_pid) + ')' if head_pid else ''}; "
          f"state in {state_path()}")
    if metrics_port is not None:
        print(f"metrics: http://{ns.metrics_host}:{metrics_port}/metrics")
    return 0


def cmd_down(ns: argparse.Namespace) -> int:
    import contextlib

    from .operate import ClusterState, connect, stop_head

    state = ClusterState.load()
    with contextlib.suppress(Exception):
        cluster, _ = connect(state)
        cluster.shutdown()
    if state.head_pid is not None:
        stop_head(state.head_pid)
    ClusterState.remove()
    print(f"down: stopped {len(state.machines)} machines"
          f"{' and the Ray head' if state.head_pid else ''}")
    return 0


def cmd_ps(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .operate import connect

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
    return 0


def cmd_top(ns: argparse.Namespace) -> int:
    from .operate import connect
    from .top import run_top

    if ns.interval <= 0:
        raise UsageError("--interval must be a positive number of seconds")
    cluster, _ = connect()
    run_top(lambda: list(cluster.machines.values()), ns.interval,
            balancer=cluster.balancer_state, once=ns.once or not sys.stdout.isatty())
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    from .operate import connect, find_process

    cluster, _ = connect()
    source = find_process(cluster, ns.pid)
    cluster.machine(ns.machine)  # an unknown destination fails here, clearly
    record = cluster.machine(source).migrate(ns.pid, ns.machine, _options(ns))
    phases = ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in record["phases"].items())
    print(f"migrated {ns.pid} {record['from']} → {record['to']} in "
          f"{1000 * record['seconds']:.1f} ms, {record['pages']} pages ({phases})")
    return 0


def cmd_drain(ns: argparse.Namespace) -> int:
    from .operate import connect

    cluster, _ = connect()
    report = cluster.resolve_drain(cluster.drain_async(ns.machine, ns.deadline))
    for r in report.moved:
        print(f"  {r['pid']} → {r['to']} in {1000 * r['seconds']:.1f} ms")
    print(f"drain of {ns.machine}: {len(report.moved)} moved in {report.seconds:.2f} s"
          + ("" if report.ok else f"; still there at the deadline: {list(report.left)}"))
    return 0 if report.ok else 1


def cmd_undrain(ns: argparse.Namespace) -> int:
    from .operate import connect

    cluster, _ = connect()
    cluster.undrain(ns.machine)
    print(f"{ns.machine} takes processes again")
    return 0


def _attach_up(address: str | None) -> Any:
    """The cluster `tender-ray up` started, when `--address` names it; else None."""
    if address is None:
        return None
    from .operate import ClusterState, connect, state_path

    if not state_path().exists():
        return None
    state = ClusterState.load()
    if address not in (state.address, "auto"):
        return None
    cluster, _ = connect(state)
    return cluster


def _configure_logs(ns: argparse.Namespace) -> None:
    """structlog, configured once for this process; the actors configure themselves from the
    same TENDER_LOG_* variables (which Ray workers inherit, see Cluster.__init__)."""
    from . import logs

    if ns.log_format:
        os.environ["TENDER_LOG_FORMAT"] = ns.log_format
    if ns.log_level:
        os.environ["TENDER_LOG_LEVEL"] = ns.log_level
    logs.configure(ns.log_format, ns.log_level)


def _environment() -> list[str]:
    return [f"{k}={v}" for k, v in os.environ.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_USAGE
    _configure_logs(ns)
    handlers = {"exec": cmd_exec, "bench": cmd_bench, "run": cmd_run, "up": cmd_up,
                "down": cmd_down, "ps": cmd_ps, "migrate": cmd_migrate, "drain": cmd_drain,
                "undrain": cmd_undrain, "top": cmd_top}
    try:
        return handlers[ns.command](ns)
    except UsageError as exc:
        return _fail(str(exc))
    except MachineError as exc:
        print(f"tender-ray: machine failure: {exc}", file=sys.stderr)
        return 1
    except TenderError as exc:
        print(f"tender-ray: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
