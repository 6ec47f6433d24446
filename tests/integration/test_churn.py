"""The churn benchmark on real Ray actors, small: ~100 processes arriving and leaving in under
two minutes on 4 machines with the balancer moving them; no frame or resource leak, no
machine actor restarted, every output the native one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from tender_ray.bench.churn import ChurnSpec, run_churn


@pytest.fixture(autouse=True)
def own_ray() -> Iterator[None]:
    if ray.is_initialized():  # another module's Ray: the run starts its own
        ray.shutdown()
    yield


@pytest.mark.slow  # ~100 s: 100 processes at 2 a second, then the last ones end
def test_churn_of_a_hundred_processes_leaks_nothing() -> None:
    result = run_churn(ChurnSpec(processes=100, rate=2.0, seed=1), sample_every=5.0)
    assert result.processes == 100
    assert result.ok, result
    assert result.migrations > 0, "the balancer moved nothing: no churn of migrations"
    assert all(len(rss) == 3 for rss in result.rss_mib.values()), result.rss_mib
    for name, samples in result.rss_samples.items():  # every 5 s over ~60 s or more
        assert len(samples) >= 10, (name, samples)
        assert all(0 <= (s.part("object_store") or 0) <= s.rss_mib for s in samples), samples
        assert result.steady[name].samples >= 5, result.steady[name]
