"""What `m3 train all --recipe micro` tells the person who started it: a banner per stage, progress bars with the
time left, the end-of-run table and the evaluation table, without library chatter; the evaluation plot says what
it shows."""

from __future__ import annotations

import json
import re

_PHASES = ("vision distillation", "align align_projector", "align align", "ift ift", "medical-ift medical-ift")


def _lines(output: str) -> list[str]:
    """The printed lines, each progress-bar redraw (carriage return) a line of its own."""
    return [line.rstrip() for line in re.split(r"[\r\n]+", output) if line.strip()]


def test_each_stage_has_a_banner_and_a_progress_bar_that_shows_the_time_left(micro_run_output):
    lines = _lines(micro_run_output)
    banners = [line for line in lines if line.startswith("== stage ")]
    assert [b.split(":")[0] for b in banners] == ["== stage 1/4 · vision", "== stage 2/4 · align", "== stage 3/4 · ift",
                                                  "== stage 4/4 · medical-ift"]
    for phase, steps in (("vision", 6), ("align_projector", 8), ("align", 10), ("ift", 10), ("medical-ift", 12)):
        # tqdm: "ift:  50%|█████     | 5/10 [00:01<00:01, ...]" — elapsed < time left
        bar = re.compile(rf"^{re.escape(phase)}:\s+\d+%\|.*\| \d+/{steps} \[\d\d:\d\d<\d\d:\d\d")
        assert any(bar.match(line) for line in lines), f"no progress bar with the time left for {phase}"
    assert any(line.startswith("== evaluation: held-out phantoms through the agent, 3 items per part") for line in lines)


def test_the_run_ends_with_a_table_of_every_phase_and_the_evaluation_table(micro_run_output):
    lines = _lines(micro_run_output)
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    assert lines[header].split("  ")[0] == "stage" and re.search(
        r"steps\s+train loss \(first → last\)\s+probe loss \(before → after\)\s+time\s+status$", lines[header])
    rows = [" ".join(line.split()[:2]) for line in lines[header + 2: header + 2 + len(_PHASES)]]
    assert rows == list(_PHASES)
    assert all(line.endswith("trained") and "→" in line for line in lines[header + 2: header + 2 + len(_PHASES)])
    table = lines[lines.index(next(line for line in lines if line.startswith("evaluation ("))) + 1:]
    assert table[0] == "| metric | value | target | met |"
    assert any(line.startswith("| closed-question accuracy | ") for line in table)
    assert lines[-1].startswith("run folder: ")


def test_library_chatter_is_not_printed(micro_run_output):
    lines = _lines(micro_run_output)
    logged = [line for line in lines if re.match(r"^(DEBUG|INFO) ", line)]  # the run's own messages carry no level
    assert not logged, logged
    assert not [line for line in lines if "DeprecationWarning" in line or "FutureWarning" in line or "Loading checkpoint" in line]
    assert len(lines) < 200  # progress redraws included; accelerate alone used to print 30 lines


def test_the_evaluation_plot_names_its_axes_and_the_model(micro_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from vlm.eval.tables import write_tables

    out, _ = micro_run
    seen = []
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        seen.extend((ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    report = json.loads((out / "eval" / "metrics.json").read_text())
    write_tables(report, tmp_path)
    [(title, xlabel, ylabel)] = seen
    assert report["model"] in title and "truth" in title  # which model, which experts
    assert xlabel and "score" in ylabel
    assert (tmp_path / "eval.png").stat().st_size > 1000
