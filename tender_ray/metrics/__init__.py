"""Observability: the Prometheus collector and server that turn machine and balancer snapshots
into metrics, served by one exporter (the Ray layer polls the machines for it). Reads
snapshots only: never an engine, never Ray.
"""
