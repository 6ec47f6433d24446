"""The committed Grafana dashboards are exactly what grafana/build.py generates with Grafana's
Foundation SDK: edit the builder, run `make dashboards`, commit both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "grafana" / "build.py"
COMMITTED = ROOT / "grafana" / "dashboards"


def test_committed_dashboards_are_the_generated_ones(tmp_path: Path) -> None:
    pytest.importorskip(
        "grafana_foundation_sdk",
        reason="grafana-foundation-sdk is not installed: `pip install -e '.[dashboards]'` "
               "(`make test` installs it)")
    subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path)], check=True,
                   capture_output=True, text=True)
    generated = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_bytes() for p in COMMITTED.glob("*.json")}
    assert sorted(generated) == sorted(committed), "dashboards without a builder, or not written"
    stale = [name for name in sorted(generated) if generated[name] != committed[name]]
    assert not stale, (f"grafana/dashboards/{', '.join(stale)} differ from what grafana/build.py "
                       "generates: run `make dashboards` (and edit the builder, not the JSON)")


def test_generation_is_byte_stable(tmp_path: Path) -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is not installed")
    for out in ("one", "two"):
        subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path / out)], check=True,
                       capture_output=True)
    for path in (tmp_path / "one").glob("*.json"):
        text = path.read_bytes()
        assert text == (tmp_path / "two" / path.name).read_bytes(), path.name
        assert text.endswith(b"}\n") and not text.endswith(b"\n\n"), path.name
