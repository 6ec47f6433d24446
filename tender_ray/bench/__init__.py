"""Benchmarks, one entry point each: `engine` (run time ÷ native per engine) and `migration`
(migration time ÷ raw transfer, and the paper's strategies side by side)."""
