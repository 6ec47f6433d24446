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
              "exec_on_cluster_to_program_start_seconds": 1.8,
              "exec_served_seconds": [0.5, 0.7, 0.6],
              "exec_served_phases": {"client start": 0.3, "hand-over": 0.01},
              "exec_served_quiet_seconds": [0.4, 0.5, 0.45],
              "native_seconds": [0.002, 0.001, 0.003]}
    text = report(result)
    assert "bare ray.init + shutdown  median 6.50 s" in text
    assert "tender-ray exec           median 7.75 s" in text
    assert "exec / bare (median of rounds)  1.18" in text
    assert "ray 4.50, machines 1.50" in text
    assert "exec --address auto, exec server   median 0.600 s" in text
    assert "where it went (median s): client start 0.300, hand-over 0.010" in text
    assert "the same without its log lines     median 0.450 s" in text
    assert "exec --address auto, no server     median 2.100 s, program started after 1.80 s" \
        in text
    assert "/bin/true natively       median 0.0020 s" in text


def test_the_report_of_the_cluster_part_alone() -> None:
    result = {"program": "/bin/true", "rounds": 1, "up_seconds": 9.0, "down_seconds": 3.0,
              "exec_on_cluster_seconds": [2.0], "exec_on_cluster_phases": {},
              "exec_on_cluster_to_program_start_seconds": 1.8, "exec_served_seconds": [0.5],
              "exec_served_phases": {}, "exec_served_quiet_seconds": [0.4],
              "native_seconds": [0.002]}
    text = report(result)
    assert "embedded" not in text and "exec server   median 0.500 s" in text


def test_the_client_record_is_read_by_its_name() -> None:
    line = json.dumps({"start": 0.3, "handover": 0.02, "run": 0.2,
                       "event": "exec client phases", "level": "info"})
    assert _phases(line, "exec client phases") == {"start": 0.3, "handover": 0.02, "run": 0.2}
    assert _phases(line) == {}
