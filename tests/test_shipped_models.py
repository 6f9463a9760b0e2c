"""Every model folder the repository ships (the default VLM, the vision encoder, the experts) matches its
manifest, so the app does not refuse its own bundle: a card, a metrics file or weights edited without
`m3 manifest write FOLDER` (or a re-export) fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from experts.manifest import ManifestError, verify_manifest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["vlm/weights/default", "vlm/encoder/weights", "experts/weights/ct_segmentation",
           "experts/weights/cxr_classification", "experts/weights/mri_brain_tumor"]


def test_every_shipped_model_folder_is_listed_here():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*model.safetensors"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = {Path(p).parent.as_posix() for p in tracked.stdout.split()}  # what the repository ships, not local caches
    found = {f if not f.endswith(("/llm", "/vision_tower", "/mm_projector")) else f.rsplit("/", 1)[0] for f in found}
    assert found == set(SHIPPED)


@pytest.mark.parametrize("folder", SHIPPED)
def test_a_shipped_model_folder_matches_its_manifest(folder):
    files = verify_manifest(ROOT / folder)["files"]
    assert "model_card.md" in files and any(f.endswith("model.safetensors") for f in files)


def test_an_edited_model_card_is_refused_with_the_file_named(tmp_path):
    copy = tmp_path / "ct"
    shutil.copytree(ROOT / "experts/weights/ct_segmentation", copy)
    (copy / "model_card.md").write_text((copy / "model_card.md").read_text() + "\nEdited.\n")
    with pytest.raises(ManifestError, match="changed model_card.md"):
        verify_manifest(copy)
