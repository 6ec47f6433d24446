"""Shared helpers of the tender_ray tests, importable from tests/unit and tests/integration
alike (the pytest config puts `tests/` on the path: `from support.machines import finish`).

- `support.programs`: the workload binaries and running them on the host (`workload`,
  `run_native`, the cached `native` and `native_standby`, `need` (skip unless a host program
  is installed), `ROOT` and the timeouts).
- `support.machines`: driving a machine, written once over the `MachineLike` protocol that an
  in-process `Machine` and a Ray `MachineHandle` both satisfy: start, wait, finish, run to the
  end, poll for a state or a condition, the "machine gave everything back" checks, moving a
  process round-robin until it ends (`bounce`), and a slow transport; `start_standby` and
  `finish_standby` for the `standby` workload, which runs until the test tells it to finish,
  so a test that moves a process knows it is still there however busy the host is.
- `support.balancing`: the fakes of what the balancing loop talks to, for its tests without
  Ray: a `FakeClock` (time passes only when the loop waits or sleeps), a fake call's `Reply`,
  and `FakeMachine`s that move processes between them in memory.
- `support.processes`: host processes seen from /proc (`alive`, `group_members`), to check
  that what a test started in subprocesses (a Ray head, the CLI) is gone.
- `support.snapshots`: hand-made snapshots (`stats`, `proc`, `record`) and the balancer's
  state (`balancer_state`, `drain_report`) for the metrics and `top` tests; no machine, no Ray.
- `support.engines`: the engines a machine test is parametrised over (`ENGINES`: the native
  one skipped where its self-check fails here).
- `support.leases`: machines with a short migration lease for the protocol's tests (`LEASE`,
  the standby `ARGS` they migrate, `short_lease_machines`) and `only_on` (one copy ran).
- `support.clusters`: for the integration tests, a module's own embedded Ray with machine
  actors (`own_cluster`, what a module's `cluster` fixture holds) and a scenario run to its end
  (`run_scenario_to_end`).

Fixtures stay in conftest.py; nothing here is a fixture, and nothing here imports Ray when
imported (`support.clusters` does when its helpers are called).
"""
