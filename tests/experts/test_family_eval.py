"""``m3 experts eval``: the experts on both phantom families through DICOM and ingest, with a table, JSON and plot."""

from __future__ import annotations

import json

from experts.family_eval import evaluate_families


def test_cross_family_eval_writes_a_table_json_and_plot_for_both_families(tmp_path):
    report = evaluate_families(["cxr"], 3, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| CXR macro AUROC |" in table and "family A" in table and "family B" in table
    assert (tmp_path / "results.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    for fam in ("a", "b"):
        cases = saved["results"]["cxr"][fam]["cases"]
        assert len(cases) == 3 and all(set(c["probabilities"]) == set(c["truth"]) for c in cases)
    assert report["results"]["cxr"]["b"]["cases"][0]["seed"] == 720_000, "family B's first frozen held-out seed"


def test_the_eval_command_is_wired_into_m3_experts(tmp_path, capsys):
    import argparse

    from experts.cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["experts", "eval", "--kind", "cxr", "--family", "b", "--n", "2", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert "family B" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["families"] == ["b"]
