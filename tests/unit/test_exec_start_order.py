"""What exec loads before an embedded Ray starts: only Ray itself, so that Ray's processes
come up while the rest of exec (the Ray layer, the kernel's machine, structlog) loads beside
them; and the Ray layer's names still reach callers through `tender_ray.cluster`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tender_ray.cluster
from tender_ray.cluster import cluster, embedded

LOADED = ("import json, sys\n"
          "{imports}\n"
          "print(json.dumps(sorted(m for m in sys.modules "
          "if m == 'ray' or m.startswith(('tender_ray', 'numpy', 'structlog')))))")


def _loaded_after(imports: str) -> set[str]:
    """The modules of tender_ray, Ray, numpy and structlog a fresh interpreter has loaded
    after `imports`."""
    done = subprocess.run([sys.executable, "-c", LOADED.format(imports=imports)],
                          capture_output=True, text=True, check=True, timeout=300)
    return set(json.loads(done.stdout))


def test_the_embedded_start_loads_ray_and_nothing_else_of_tender_ray() -> None:
    loaded = _loaded_after("import tender_ray.cluster.embedded")
    assert "ray" in loaded
    assert {m for m in loaded if m.startswith("tender_ray")} == {
        "tender_ray", "tender_ray.cluster", "tender_ray.cluster.embedded"}
    assert not {m for m in loaded if m.startswith(("numpy", "structlog"))}


def test_finding_the_program_loads_neither_ray_nor_the_kernel() -> None:
    loaded = _loaded_after("import tender_ray.cli.main, tender_ray.cli.exec_command, "
                           "tender_ray.cli.execute")
    assert "ray" not in loaded
    assert not {m for m in loaded if m.startswith(("tender_ray.cluster",
                                                   "tender_ray.kernel.machine"))}


def test_the_ray_layer_names_load_on_first_use() -> None:
    assert tender_ray.cluster.Cluster is cluster.Cluster
    assert tender_ray.cluster.NAMESPACE == embedded.NAMESPACE == "tender_ray"
    assert tender_ray.cluster.EMBEDDED_RAY_CONFIG is embedded.EMBEDDED_RAY_CONFIG
    assert tender_ray.cluster.PID_STRIDE == cluster.PID_STRIDE
    for name in tender_ray.cluster.__all__:
        assert getattr(tender_ray.cluster, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Clusters'"):
        _ = tender_ray.cluster.Clusters


def test_an_embedded_ray_listens_on_loopback_only_with_exec_s_sizes() -> None:
    kwargs = embedded.embedded_kwargs(3, object_store_mib=128)
    assert (kwargs["address"], kwargs["_node_ip_address"]) == ("local", "127.0.0.1")
    assert (kwargs["num_cpus"], kwargs["object_store_memory"]) == (3, 128 << 20)
    assert kwargs["_system_config"] is embedded.EMBEDDED_RAY_CONFIG
    assert not kwargs["include_dashboard"]
