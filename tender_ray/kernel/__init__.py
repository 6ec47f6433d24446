"""The kernel: one Tender machine as plain Python, no Ray. Its process table and scheduler
(the only code that changes a process's state), the system calls a process makes, the
address-space operations over the resources, the machine's two sides of a migration, and the
frozen snapshots that balancers, metrics and views read. May import `abi/`, `resources/`,
`engines/` (only through `tender_ray.engines`: `create`, `resolve`, `Engine`), `migration/`,
`config`, `errors` and `logs`.
"""
