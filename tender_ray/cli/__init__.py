"""The face: the `tender-ray` command (exec, run, up/down, ps, migrate, drain, top, bench), the
exec runner, the scenario models, runs, reports and plots, the live view and `top`. The only
layer (with `bench/`) that uses rich, matplotlib and argparse.
"""

from tender_ray.cli.main import main

__all__ = ["main"]
