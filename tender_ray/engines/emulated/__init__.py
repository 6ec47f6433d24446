"""The emulated engine: Unicorn runs a process's x86-64 code over the machine's real memory,
portable and exactly preemptible (quanta end only at translated-block boundaries, a private
flag of the pinned Unicorn build proven at start-up). Imports `abi/`, `resources/`, `errors`.

Modules: `private` (what is read from libunicorn's private structures, and the proof),
`watchdog` (the thread that ends timed quanta), `cpu` (the engine and its counters).
"""

from tender_ray.engines.emulated.cpu import Cpu, engine_counters, replay
from tender_ray.engines.emulated.private import block_boundary_stops_available

__all__ = ["Cpu", "block_boundary_stops_available", "engine_counters", "replay"]
