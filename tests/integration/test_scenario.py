"""Scenarios on a real (embedded, local) Ray: small scenario files written to tmp_path and run
by `ScenarioRun` (or `run_live`), then their reports checked — the balancer spreading a
hotspot, a drain, processes queued for memory, a machine stopped without a drain, a program
that cannot run — and the balancer actor itself with real machine actors.

One Ray for the module (every run's actors get a prefix of their own); it is shut down at the
end so other modules can start theirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from support.clusters import run_scenario_to_end
from support.programs import STANDBY_READY, native_standby, run_native, workload

from tender_ray.balancing.loop import BalancingLoop
from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.cli.execute import execute
from tender_ray.cli.live import print_compare, print_summary
from tender_ray.cli.scenario.model import load_scenario, read_scenario
from tender_ray.cli.scenario.report import ProcessReport, Report
from tender_ray.cli.scenario.run import ScenarioRun, Tracked, run_live
from tender_ray.cluster import NAMESPACE, Cluster, MachineHandle
from tender_ray.cluster.embedded import stop_embedded_ray
from tender_ray.config import MachineConfig
from tender_ray.errors import BadProgramError, ConfigError, TenderError
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord

RUN_TIMEOUT = 120.0  # seconds a test scenario may take before the test gives up
REPORT_KEYS = {"scenario", "policy", "makespan_seconds", "ideal_makespan_seconds",
               "makespan_over_ideal", "migrations", "processes", "lost", "queued", "drains",
               "events_not_fired", "all_match_native"}
PROCESS_KEYS = {"name", "pid", "program", "args", "exit_status", "exit_reason",
                "stdout_sha256", "native_stdout_sha256", "output_matches_native", "machines",
                "cpu_seconds", "run_seconds", "started_at", "queued_seconds"}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    if ray.is_initialized():  # another module's Ray: this one must be its own
        ray.shutdown()
    for attempt in (1, 2):  # a busy host can miss Ray's 30 s raylet start-up wait once
        try:
            ray.init(address="local", namespace=NAMESPACE, num_cpus=os.cpu_count() or 2,
                     object_store_memory=256 << 20, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False, _node_ip_address="127.0.0.1")
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield
    finally:
        stop_embedded_ray()


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    data.setdefault("name", "t")
    data.setdefault("timeout", RUN_TIMEOUT)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_scenario(tmp_path: Path, data: dict[str, Any], *, policy: str | None = None
                 ) -> tuple[Report, list[str]]:
    """Run a scenario step by step to its end; its report (also written to tmp_path/rep)
    and the event lines it logged."""
    return run_scenario_to_end(read_scenario(write(tmp_path, data)), RUN_TIMEOUT,
                               policy=policy, report_dir=tmp_path / "rep")


def native_sha(program: str, *args: str) -> str:
    import hashlib

    _, out, _ = run_native(workload(program), args)
    return hashlib.sha256(out).hexdigest()


def check_report_files(report_dir: Path, report: Report) -> None:
    assert (report_dir / "load.png").stat().st_size > 1000
    assert (report_dir / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report_dir / "report.json").read_text()) == \
        json.loads(report.to_json())


def check_keys(report: Report) -> None:
    """report.json's shape: the fields its readers look for."""
    data = json.loads(report.to_json())
    assert set(data) >= REPORT_KEYS, REPORT_KEYS - set(data)
    assert {"count", "bytes", "records", "failures"} <= set(data["migrations"])
    for p in data["processes"]:
        assert set(p) >= PROCESS_KEYS, PROCESS_KEYS - set(p)


def finished_native(p: ProcessReport) -> bool:
    return (p.exit_status == 0 and p.output_matches_native is True
            and p.stdout_sha256 == p.native_stdout_sha256)


# --- (a) a hotspot: the balancer spreads it; outputs stay native ------------------------------

def test_hotspot_greedy_spreads_and_outputs_are_native(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "name": "hot",
        "machines": [{"name": "m", "count": 2, "computations": 1, "memory_mib": 128}],
        "workloads": [{"program": "sieve", "args": ["12000000"], "count": 6, "at": 0.0,
                       "machine": "m0"}],
        "balancer": {"policy": "none", "interval": 0.2, "max_moves": 4, "cooldown": 1.0},
    }
    scenario, programs = load_scenario(write(tmp_path, data))
    result = run_live(scenario, programs, address=None, policy="greedy",
                      report_dir=tmp_path / "rep", live=False)
    report = result.report
    check_keys(report)
    check_report_files(tmp_path / "rep", report)
    assert report.policy == "greedy"  # the override, not the file's none
    assert report.migrations.count > 0, report.migrations.failures
    assert report.migrations.bytes > 0
    for record in report.migrations.records:
        assert (record.source, record.destination) in (("m0", "m1"), ("m1", "m0"))
        assert record.reason == "greedy"
    expected = native_sha("sieve", "12000000")
    assert len(report.processes) == 6
    for p in report.processes:
        assert finished_native(p), p
        assert p.native_stdout_sha256 == expected
        assert p.machines[0] == "m0"
    assert any(p.machines[-1] == "m1" for p in report.processes)
    assert report.lost == () and report.drains == ()
    assert all(p.queued_reason == "" for p in report.processes)
    assert report.all_match_native is True
    assert report.makespan_seconds > 0 and report.ideal_makespan_seconds > 0
    assert report.makespan_over_ideal == pytest.approx(
        report.makespan_seconds / report.ideal_makespan_seconds)
    # the tables print without error; the moves are summed by mode (the balancer's: stop)
    print_summary(report, tmp_path / "rep")
    print_compare([report, report])
    printed = capsys.readouterr().out
    assert f"stop: {report.migrations.count} moved" in printed, printed


# --- (b) a drain: everything leaves the machine before the deadline -------------------------

def test_drain_moves_everything_off_and_outputs_are_native(tmp_path: Path) -> None:
    on_m0: list[dict[str, Any]] = [
        {"program": "memhold", "args": ["16", "120", "10"]},
        {"program": "compute_sleep", "args": ["100"]},
        # 12 MiB each (what a 12000000 sieve held) and 1.2 s of sleep: still running at the
        # drain (0.5 s) and through it on any host; a sieve's time shrinks with CPU speed,
        # and on a fast host two sieves ended before the drain
        {"program": "memhold", "args": ["12", "120", "10"], "count": 2},
    ]
    data = {
        "name": "drain",
        # emulated: every process must still be running when the drain comes (each sleeps at
        # least 1 s, a time the host's speed does not shorten)
        "machines": [{"name": "m", "count": 2, "computations": 1, "memory_mib": 96,
                      "engine": "emulated"}],
        "workloads": [{**w, "at": 0.0, "machine": "m0"} for w in on_m0],
        "balancer": {"policy": "none", "interval": 0.2},
        "events": [{"at": 0.5, "action": "drain", "machine": "m0", "deadline": 20}],
    }
    report, events = run_scenario(tmp_path, data)
    check_keys(report)
    check_report_files(tmp_path / "rep", report)
    assert len(report.drains) == 1, events
    drain = report.drains[0]
    assert drain.machine == "m0"
    assert drain.ok is True and drain.left == ()
    assert drain.seconds < drain.deadline == 20
    moved = {r.pid: r.destination for r in drain.moved}
    assert moved, drain
    assert set(moved.values()) == {"m1"}
    procs = report.processes
    assert len(procs) == 4
    for p in procs:
        assert finished_native(p), p
        # every one still ran at the drain: it left m0 for m1 once, and stayed off m0
        assert p.machines == ("m0", "m1"), (p, drain)
    records = report.migrations.records
    assert {r.pid for r in records if r.source == "m0"} == {p.pid for p in procs}
    assert all(r.reason == "drain" for r in records)
    assert report.lost == () and report.events_not_fired == ()


# --- (c) more processes than real memory holds: they queue ----------------------------------

def test_processes_that_do_not_fit_in_memory_queue(tmp_path: Path) -> None:
    data = {
        "name": "memory",
        "machines": [{"name": "m", "count": 1, "computations": 1, "memory_mib": 40}],
        "workloads": [{"program": "memhold", "args": ["24", "30", "10"], "count": 3,
                       "at": 0.0, "memory_mib": 24}],
        "balancer": {"policy": "none", "interval": 0.2},
    }
    report, events = run_scenario(tmp_path, data)
    check_keys(report)
    assert report.queued, ("nothing queued", events)
    queued = {q.name: q for q in report.queued}
    assert set(queued) <= {p.name for p in report.processes}
    assert len(report.processes) == 3
    for p in report.processes:
        assert finished_native(p), p
    for q in queued.values():
        assert q.reason and "MiB" in q.reason, q
        assert q.waited_seconds is not None and q.waited_seconds > 0.2, q


def test_queued_lists_only_processes_that_waited_for_memory(tmp_path: Path) -> None:
    data = {
        "name": "queued",
        "machines": [{"name": "m", "memory_mib": 64}],
        "workloads": [{"program": "hello", "count": 2, "at": 0.0}],
    }
    scenario, programs = load_scenario(write(tmp_path, data))
    run = ScenarioRun(scenario, programs)
    try:
        late, waited = run.arrivals
        late.started, late.pid, late.placed_on = 0.5, 1, "m"  # slow to start, never queued
        waited.started, waited.pid, waited.placed_on = 0.9, 2, "m"
        waited.queued_reason = "hello: needs 40 free frames, 3 free; retry when processes end"
        for a in (late, waited):
            assert a.pid is not None
            run.tracked[a.pid] = Tracked(a, "m")
        report = run.build_report([], [], {})
    finally:
        run.cluster.shutdown()
    assert [q.name for q in report.queued] == [waited.name]


# --- (d) a machine stopped without a drain: its processes are lost, by name -----------------

def test_stop_machine_without_drain_reports_lost_processes(tmp_path: Path) -> None:
    data = {
        "name": "stop",
        "machines": [{"name": "m", "count": 2, "computations": 1, "memory_mib": 64}],
        "workloads": [
            {"program": "compute_sleep", "args": ["120"], "count": 2, "machine": "m1"},
            {"program": "sieve", "args": ["12000000"], "count": 1, "machine": "m0"},
            {"program": "hello", "count": 1, "at": 1.0, "machine": "m0"},
        ],
        "balancer": {"policy": "none", "interval": 0.2},
        "events": [{"at": 0.5, "action": "stop_machine", "machine": "m1"}],
    }
    report, events = run_scenario(tmp_path, data)
    check_keys(report)
    lost = report.lost
    assert sorted(x.name for x in lost) == ["compute_sleep#0", "compute_sleep#1"], events
    assert all(x.machine == "m1" for x in lost)
    assert any("compute_sleep#0" in e and "lost" in e for e in events)
    by_name = {p.name: p for p in report.processes}
    for name in ("compute_sleep#0", "compute_sleep#1"):
        assert by_name[name].exit_reason == "lost"
        assert by_name[name].exit_status is None
    # the rest of the scenario went on, the later arrival included
    for name in ("sieve#2", "hello#3"):
        assert finished_native(by_name[name]), by_name[name]
    assert report.events_not_fired == ()


def test_arrival_pinned_to_a_stopped_machine_does_not_stop_the_scenario(tmp_path: Path
                                                                       ) -> None:
    data = {
        "name": "pinned",
        "machines": [{"name": "m", "count": 2, "memory_mib": 64}],
        "workloads": [{"program": "compute_sleep", "args": ["60"], "machine": "m0"},
                      {"program": "hello", "at": 0.6, "machine": "m1"}],
        "balancer": {"policy": "none"},
        "events": [{"at": 0.3, "action": "stop_machine", "machine": "m1"}],
    }
    report, events = run_scenario(tmp_path, data)
    by_name = {p.name: p for p in report.processes}
    assert finished_native(by_name["compute_sleep#0"])
    assert any("hello#1" in e for e in events)


# --- a program that cannot run: a message, and the rest goes on ------------------------------

def test_bad_program_error_survives_pickling() -> None:
    import pickle

    exc = BadProgramError("notelf", "not an ELF executable")
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, BadProgramError)
    assert (back.path, back.reason, str(back)) == (exc.path, exc.reason, str(exc))


def test_a_program_that_cannot_run_does_not_stop_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "notelf").write_text("#!/bin/sh\necho hi\n")
    data = {
        "name": "badprog",
        "machines": [{"name": "m", "count": 1, "memory_mib": 64}],
        "workloads": [{"program": "notelf", "at": 0.0}, {"program": "hello", "at": 0.3}],
        "balancer": {"policy": "none"},
    }
    with pytest.raises(ConfigError, match=r"workloads\[0\]\.program: notelf"):
        load_scenario(write(tmp_path, data))  # strict: the file check names the field
    report, _events = run_scenario(tmp_path, data)  # lenient: the rest goes on
    by_name = {p.name: p for p in report.processes}
    assert finished_native(by_name["hello#1"])
    assert [n.name for n in report.not_started] == ["notelf#0"]
    assert "not an ELF" in report.not_started[0].reason


# --- the balancer actor with real machine actors --------------------------------------------

def test_balancer_actor_spreads_processes_over_machine_actors() -> None:
    """Four computing processes on one of two machine actors: the threshold balancer moves
    some to the other. They run until told (standby spin), so the test waits for the spread
    itself, not for the processes to last long enough on this host."""
    cluster = Cluster(prefix="balancer-test-")
    try:
        for name in ("a", "b"):
            cluster.add_machine(MachineConfig(name=name, memory_mib=128, quantum_us=2000))
        cluster.start_balancer(BalancerParams(policy=Policy.THRESHOLD, margin=0.5,
                                              max_moves=2, cooldown=1.0),
                               MigrationOptions(), interval=0.2)
        path = workload("standby")
        args = ["1", "spin"]
        pids = [cluster.machine("a").exec(path.read_bytes(), "standby", ["standby", *args])
                for _ in range(4)]
        chunks: dict[int, dict[int, bytes]] = {pid: {} for pid in pids}
        ended: dict[int, Any] = {}
        spread_seen: set[str] = set()
        told: set[int] = set()
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(ended) < len(pids):
            assert time.monotonic() < deadline, f"spread over {spread_seen}, ended {sorted(ended)}"
            for name, result in cluster.poll_all().items():
                assert not isinstance(result, BaseException), result
                if any(p.pid in chunks for p in result.processes):
                    spread_seen.add(name)
                for c in result.output:
                    if c.fd == 1:
                        chunks[c.pid][c.offset] = c.data
                for info in result.ended:
                    ended[info.pid] = info
            if spread_seen == {"a", "b"}:  # spread: each is told to finish, where it is now
                for pid in set(pids) - told:
                    said = b"".join(d for _, d in sorted(chunks[pid].items()))
                    if not said.startswith(STANDBY_READY):
                        continue  # its handler is not there yet: SIGUSR1 would kill it
                    with contextlib.suppress(TenderError):  # (moving just then: next round)
                        cluster.locate(pid).kill(pid, signal.SIGUSR1)
                        told.add(pid)
            time.sleep(0.1)
        state = cluster.balancer_state()
        assert state.migrations, state.failures
        assert state.rounds > 0 and state.decisions >= len(state.migrations)
        assert all(r.reason == "threshold" and r.source != r.destination
                   for r in state.migrations)
        native_out = native_standby(*args)[1]
        for pid in pids:
            out = b"".join(d for _, d in sorted(chunks[pid].items()))
            assert (ended[pid].exit_status, out) == (0, native_out)
        assert any(ended[pid].machine != "a" for pid in pids)
    finally:
        cluster.shutdown()


# --- exec (what `tender-ray exec --address auto` runs) on a cluster with a drained machine -----

@pytest.fixture(scope="module")
def drainable() -> Iterator[Cluster]:
    """Two machine actors and a balancer that only drains (what `tender-ray up` starts)."""
    cluster = Cluster(prefix="exec-drain-")
    try:
        for name in ("a", "b"):
            cluster.add_machine(MachineConfig(name=name, memory_mib=64, quantum_us=2000))
        cluster.start_balancer(BalancerParams(policy=Policy.NONE), MigrationOptions(),
                               interval=0.1)
        yield cluster
    finally:
        cluster.shutdown()


def test_exec_skips_a_drained_first_machine(drainable: Cluster) -> None:
    drainable.machine("a").cordon()
    try:
        out: list[bytes] = []
        result = execute(drainable, os.fspath(workload("hello")), [], [],
                         sink=lambda fd, data: out.append(data) if fd == 1 else None)
    finally:
        drainable.undrain("a")
    assert (result.exit_status, b"".join(out)) == run_native(workload("hello"))[:2]
    assert result.machine == "b"


def test_exec_follows_a_process_the_drain_moves(drainable: Cluster) -> None:
    out: list[bytes] = []
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = execute(drainable, os.fspath(workload("compute_sleep")), ["150"],
                                    [], machine="a",
                                    sink=lambda fd, data: out.append(data) if fd == 1 else None)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not out and time.monotonic() < deadline:  # it runs on a
            time.sleep(0.05)
        report = drainable.resolve_drain(drainable.drain_async("a", 20.0), timeout=60)
        assert report.ok, report
        thread.join(timeout=120)
    finally:
        drainable.undrain("a")
        thread.join(timeout=120)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.machine == "b"
    assert (result.exit_status, b"".join(out)) == run_native(workload("compute_sleep"),
                                                             ["150"])[:2]


# --- the drain report and the balancer's own record of moves ----------------------------------

class SlowReply(MachineHandle):
    """A machine handle whose migrate reply takes 0.5 s longer to come back (a busy or distant
    balancer): the process has left the source well before the balancer has its record."""

    def migrate(self, *args: Any, **kwargs: Any) -> MigrationRecord:
        record = super().migrate(*args, **kwargs)
        time.sleep(0.5)
        return record


def test_machines_tell_the_balancer_so_it_need_not_wait_its_interval() -> None:
    """With an interval far longer than the test, processes started on one machine are still
    spread at once: the machines tell the balancer actor of every start."""
    cluster = Cluster(prefix="kick-test-")
    try:
        for name in ("a", "b"):
            cluster.add_machine(MachineConfig(name=name, memory_mib=64, quantum_us=2000))
        interval = 600.0
        cluster.start_balancer(BalancerParams(policy=Policy.GREEDY, margin=0.5, max_moves=2,
                                              cooldown=60.0), MigrationOptions(),
                               interval=interval)
        path = workload("rmw_counter")
        started = time.monotonic()
        pids = [cluster.machine("a").exec(path.read_bytes(), "rmw_counter",
                                          ["rmw_counter", "4000000000"]) for _ in range(2)]
        while not cluster.balancer_state().migrations:
            assert time.monotonic() - started < interval / 10, "the balancer waited"
            time.sleep(0.05)
        state = cluster.balancer_state()
        assert [(r.source, r.destination) for r in state.migrations] == [("a", "b")]
        assert state.migrations[0].pid in pids
        for pid in pids:
            for handle in cluster.machines.values():
                with contextlib.suppress(Exception):
                    handle.kill(pid)
    finally:
        cluster.shutdown()


def test_drain_report_lists_every_move_even_with_a_slow_reply() -> None:
    cluster = Cluster(prefix="drain-race-")
    balancer: BalancingLoop | None = None
    try:
        for name in ("a", "b"):
            cluster.add_machine(MachineConfig(name=name, memory_mib=64, quantum_us=2000))
        # The balancing loop itself, over the machines' handles (a's with the slow reply).
        balancer = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 0.05)
        balancer.add_machine(SlowReply("a", cluster.machine("a").actor))
        balancer.add_machine(cluster.machine("b"))
        balancer.start()
        path = workload("compute_sleep")
        pid = cluster.machine("a").exec(path.read_bytes(), "compute_sleep",
                                        ["compute_sleep", "300"])
        report = balancer.drain("a", 20.0)
        assert report.ok and report.left == ()
        time.sleep(1.0)  # the record has certainly arrived by now
        assert [r.pid for r in balancer.state().migrations] == [pid]
        assert [r.pid for r in report.moved] == [pid]
    finally:
        if balancer is not None:
            balancer.stop()
        cluster.shutdown()


# --- real programs: Debian's, reading files and stdin, moved and drained ----------------------

def test_real_programs_scenario_outputs_are_native(tmp_path: Path) -> None:
    """configs/real-programs.yaml as shipped: Debian's dynamically linked coreutils, gzip, xz,
    bc and python3 and busybox-static, reading a file or a stdin file from the scenario's
    directory, balanced and drained mid-run; every output is the native run's."""
    scenario_file = Path(__file__).resolve().parents[2] / "configs" / "real-programs.yaml"
    read = read_scenario(scenario_file)
    missing = [str(w.program) for w in read.scenario.workloads if not Path(w.program).exists()]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)} (make setup installs them)")
    assert read.problems == ()
    result = run_live(read.scenario, read.programs, address=None, policy=None,
                      report_dir=tmp_path / "rep", live=False)
    report = result.report
    assert len(report.processes) == sum(w.count for w in read.scenario.workloads)
    for p in report.processes:
        assert finished_native(p), p
    assert report.lost == () and report.ok, report.events_failed
