"""tender_ray: Tender's process migration on Ray.

A Tender machine is a Ray actor that owns the resource managers and its real memory; real
x86-64 Linux programs run on it as Tender processes and migrate between machines in the paper's
three steps (create, transform, delete). This module is the public API:

    from tender_ray import Cluster, MachineConfig, MigrationOptions

    cluster = Cluster(num_cpus=2)
    a = cluster.add_machine(MachineConfig(name="a"))
    b = cluster.add_machine(MachineConfig(name="b"))
    pid = a.exec(image, "sieve", ["sieve", "1000000"])
    record = a.migrate(pid, "b", MigrationOptions())

Names are loaded on first use, so importing one layer (say `tender_ray.abi`) does not start
Ray or load an engine. Everything else is private to its layer; the README's module map says
where each lives.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tender_ray.balancing.policies import BalancerParams, Policy
    from tender_ray.cluster import Cluster, MachineHandle
    from tender_ray.config import MachineConfig
    from tender_ray.errors import (
        BadProgramError,
        ConfigError,
        CordonedError,
        EngineError,
        MachineError,
        MachineStoppedError,
        MigrationError,
        OutOfMemoryError,
        ProcessStateError,
        TenderError,
        UnknownMachineError,
        UnknownProcessError,
        UsageError,
    )
    from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
    from tender_ray.migration.options import MigrationOptions, Resources, Transfer
    from tender_ray.migration.record import MigrationRecord

_EXPORTS = {
    "Cluster": "tender_ray.cluster",
    "MachineHandle": "tender_ray.cluster",
    "MachineConfig": "tender_ray.config",
    "MigrationOptions": "tender_ray.migration.options",
    "Transfer": "tender_ray.migration.options",
    "Resources": "tender_ray.migration.options",
    "MigrationRecord": "tender_ray.migration.record",
    "Policy": "tender_ray.balancing.policies",
    "BalancerParams": "tender_ray.balancing.policies",
    "ProcessInfo": "tender_ray.kernel.snapshots",
    "MachineStatistics": "tender_ray.kernel.snapshots",
    **{name: "tender_ray.errors" for name in (
        "TenderError", "UsageError", "BadProgramError", "UnknownProcessError",
        "ProcessStateError", "UnknownMachineError", "MigrationError", "CordonedError",
        "ConfigError", "OutOfMemoryError", "MachineError", "MachineStoppedError",
        "EngineError")},
}

__all__ = [
    "BadProgramError", "BalancerParams", "Cluster", "ConfigError", "CordonedError", "EngineError",
    "MachineConfig", "MachineError", "MachineHandle", "MachineStatistics", "MachineStoppedError",
    "MigrationError", "MigrationOptions", "MigrationRecord", "OutOfMemoryError", "Policy",
    "ProcessInfo", "ProcessStateError", "Resources", "TenderError", "Transfer",
    "UnknownMachineError", "UnknownProcessError", "UsageError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tender_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
