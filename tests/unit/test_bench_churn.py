"""The churn benchmark's pure parts, without Ray: the seeded arrivals, the leak check over a
machine's statistics (frames, managers' handed-out resources, processes left), the RSS reading
and the memory slope."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tender_ray.bench.churn import (
    HOT_MACHINE,
    ChurnSpec,
    churn_scenario,
    leaks,
    rss_kib,
    slope_mib_per_100,
)
from tender_ray.errors import UsageError
from tender_ray.kernel.snapshots import MachineStatistics
from tender_ray.resources.manager import ManagerStatistics
from tender_ray.resources.real_memory import RealMemoryStatistics


def _stats(**changes: object) -> MachineStatistics:
    clean = MachineStatistics(
        name="m0", state="running", computations=(), processes={}, runnable=0, load=0.0,
        utilisation=0.0, memory=RealMemoryStatistics(frames_total=100, frames_free=100,
                                                     frames_used=0),
        managers=(ManagerStatistics("kernel process", created=4, deleted=0, reused=9, live=0,
                                    held=2, pool=2, reuse=True),),
        syscalls={}, unsupported={}, exited=9, uptime=1.0)
    return replace(clean, **changes)  # type: ignore[arg-type]


def test_arrivals_at_the_rate_seeded_mostly_on_the_hot_machine() -> None:
    spec = ChurnSpec(processes=200, rate=4.0, seed=3)
    scenario = churn_scenario(spec)
    assert scenario == churn_scenario(spec)
    ats = [w.at for w in scenario.workloads]
    assert ats == sorted(ats) and len(ats) == 200
    assert ats[-1] == pytest.approx(199 / 4.0)
    hot = sum(1 for w in scenario.workloads if w.machine == HOT_MACHINE)
    assert 100 < hot < 200  # most, not all: the rest go to the least loaded
    assert all(w.machine in (HOT_MACHINE, None) for w in scenario.workloads)


def test_unworkable_options_name_the_option() -> None:
    with pytest.raises(UsageError, match="--rate"):
        churn_scenario(ChurnSpec(rate=0.0))
    with pytest.raises(UsageError, match="--machines"):
        churn_scenario(ChurnSpec(machines=1))


def test_a_clean_machine_has_no_leak_and_each_leak_is_named() -> None:
    assert leaks(_stats()) == []
    frames = leaks(_stats(memory=RealMemoryStatistics(100, 97, 3)))
    assert frames == ["m0: 3 frames not free"]
    handed = leaks(_stats(managers=(ManagerStatistics("file", 3, 0, 0, live=1, held=0,
                                                      pool=0, reuse=False),)))
    assert handed == ["m0: 1 file still handed out"]
    left = leaks(_stats(processes={"sleeping": 1}))
    assert left and "processes left" in left[0]


def test_rss_of_this_process_and_of_none() -> None:
    kib = rss_kib(os.getpid())
    assert kib is not None and kib > 1000
    assert rss_kib(2**22 + 12345) is None  # above pid_max's default: no such process


def test_slope_is_per_hundred_processes() -> None:
    assert slope_mib_per_100([(0, 100.0), (500, 105.0), (1000, 110.0)]) == pytest.approx(1.0)
    assert slope_mib_per_100([(0, 100.0), (1000, 100.0)]) == 0.0
    assert slope_mib_per_100([(0, 100.0)]) is None
    assert slope_mib_per_100([(5, 100.0), (5, 120.0)]) is None
