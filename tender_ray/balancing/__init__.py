"""Load balancing and draining: pure policies that plan moves from load snapshots, and the
balancing loop (rounds, idle back-off, change detection, drains) over a machine-client
protocol that the Ray layer implements and tests fake. May import `kernel.snapshots`,
`migration`, `resources`, `abi` and `errors`; never an engine or Ray.
"""
