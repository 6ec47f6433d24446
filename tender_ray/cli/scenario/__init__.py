"""Scenarios (configs/*.yaml): their models, a run of one against a cluster, its report and
its plots."""
