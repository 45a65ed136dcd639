"""The benchmark's own arithmetic, and one small section run end to end."""

import json

import pytest

import bench


def test_percentiles_interpolate_between_samples():
    samples = list(range(1, 101))
    assert bench.percentile(samples, 0.5) == pytest.approx(50.5)
    assert bench.percentile(samples, 0.99) == pytest.approx(99.01)
    assert bench.summary([1.0, 2.0, 3.0]) == {"median_ms": 2.0, "p90_ms": 2.8, "p99_ms": 2.98, "samples": 3}


def test_table_marks_missed_targets():
    text = bench.table([bench.Figure("a", 1.25, "ms", 10, "x", "< 1", False),
                        bench.Figure("b", 3, "n", 2, "y")])
    assert "MISSED" in text and "1.25" in text and text.count("\n") == 5


def test_export_section_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--only", "export", "--scale", "0.01", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    names = [f["name"] for f in doc["figures"]]
    assert names == ["export: entries/s", "export: CPU per 10k entries"]
    assert doc["figures"][0]["samples"] == 5000 and doc["figures"][0]["extra"]["failed"] == 0
    assert "export: entries/s" in capsys.readouterr().out
