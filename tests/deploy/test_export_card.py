"""An `m3 export` build's model card states the build's own measured figures; figures measured on another run (the
source model's card, a `--model-card` table) appear only under a heading naming where they were measured, and the
shipped benchmark tables are never copied in by default."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vlm.export import ExportConfig, ExportError, export_build

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FIGURE = "VQA accuracy 0.913 on 40 held-out items"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny random VILA-layout model (tests/vlm's builders) whose card reports a figure of its own."""
    from vlm.tokenizer import TokenizerConfig, train_tokenizer

    spec = importlib.util.spec_from_file_location("m3_vlm_builders", ROOT / "tests" / "vlm" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    src = tmp_path_factory.mktemp("export_card") / "src"
    builders.build_tiny_m3(train_tokenizer(builders.CORPUS, None, TokenizerConfig(vocab_size=600))).save_pretrained(src)
    (src / "model_card.md").write_text(f"# Source model\n\n## Evaluation\n\n{SOURCE_FIGURE}.\n")
    return src


def _sections(card: str) -> dict[str, str]:
    """Second-level heading → the text under it."""
    out, heading = {}, ""
    for line in card.splitlines():
        if line.startswith("## "):
            heading = line[3:]
            out[heading] = ""
        elif heading:
            out[heading] += line + "\n"
    return out


def test_the_card_holds_the_builds_own_figures_and_labels_the_source_models(source, tmp_path):
    build = export_build(source, tmp_path / "build", ExportConfig(dtype="float32", measure_memory=False))
    card = (build / "model_card.md").read_text()
    sections = _sections(card)
    assert "Parameters: LM " in sections["Memory and hardware"]
    labelled = [h for h in sections if h.startswith("Source model") and "not on this build" in h]
    assert len(labelled) == 1 and str(source.resolve()) in labelled[0]
    assert card.count(SOURCE_FIGURE) == 1 and SOURCE_FIGURE in sections[labelled[0]]
    assert "#### Evaluation" in sections[labelled[0]]  # the source card's headings sit under its section
    compress_table = (ROOT / "benchmarks" / "results" / "compress.md").read_text().splitlines()[2]
    assert compress_table not in card  # the shipped model's benchmark tables are not this build's figures


def test_a_table_given_with_model_card_is_labelled_with_its_source(source, tmp_path):
    table = tmp_path / "compress.md"
    table.write_text("## Compression\n\n| masks | perplexity |\n|---|---|\n| 2:4 | 12.5 |\n")
    build = export_build(source, tmp_path / "build", ExportConfig(dtype="float32", measure_memory=False, model_card=str(table)))
    sections = _sections((build / "model_card.md").read_text())
    heading = next(h for h in sections if h.startswith("Included from"))
    assert str(table) in heading and "not on this build" in heading
    assert "| 2:4 | 12.5 |" in sections[heading] and "#### Compression" in sections[heading]


def test_a_missing_model_card_file_is_refused_before_anything_is_written(source, tmp_path):
    with pytest.raises(ExportError, match="--model-card must be a Markdown file.*does not exist"):
        export_build(source, tmp_path / "build", ExportConfig(dtype="float32", measure_memory=False, model_card=str(tmp_path / "nope.md")))
    assert not (tmp_path / "build").exists()
