"""`tender-ray bench start` without running it: exec's `exec phases` log line is read back
from its JSON logs, and the report puts exec beside the bare ray.init with the ratio."""

from __future__ import annotations

import json

from tender_ray.bench.start import _phases, report


def test_the_phases_line_is_read_from_json_logs() -> None:
    line = json.dumps({"check": 0.01, "ray": 4.2, "machines": 1.1, "program": 0.05,
                       "shutdown": 1.2, "event": "exec phases", "level": "info",
                       "timestamp": "2026-12-07T16:00:00Z"})
    stderr = f'{{"event": "other", "level": "info"}}\n{line}\nsome program output\n'
    assert _phases(stderr) == {"check": 0.01, "ray": 4.2, "machines": 1.1, "program": 0.05,
                               "shutdown": 1.2}
    assert _phases("nothing logged\n") == {}


def test_the_report_sets_exec_beside_the_bare_start() -> None:
    result = {"program": "/bin/true", "rounds": 2, "bare_ray_init_seconds": [6.0, 7.0],
              "exec_embedded_seconds": [7.5, 8.0], "exec_over_bare": 1.18,
              "exec_embedded_phases": {"ray": 4.5, "machines": 1.5},
              "up_seconds": 9.0, "down_seconds": 3.0, "exec_on_cluster_seconds": [2.0, 2.2],
              "exec_on_cluster_phases": {"ray": 0.7},
              "exec_on_cluster_to_program_start_seconds": 1.8}
    text = report(result)
    assert "bare ray.init + shutdown  median 6.50 s" in text
    assert "tender-ray exec           median 7.75 s" in text
    assert "exec / bare (median of rounds)  1.18" in text
    assert "ray 4.50, machines 1.50" in text
    assert "exec --address auto       median 2.10 s, program started after 1.80 s" in text
