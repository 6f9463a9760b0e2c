"""Run an expert on a study from disk and write its outputs: ``findings.json``, ``overlay.png``,
``seg.dcm`` (DICOM SEG referencing the de-identified source series) or ``mask.nii.gz`` when the input was
not DICOM. The Python function behind ``m3 experts run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data.study import Series, Study, Volume
from experts.base import ExpertError, ExpertResult

__all__ = ["run_on_study", "select_inputs", "write_outputs"]


def run_on_study(name: str, study_path: str | Path, arguments: Mapping[str, Any] | None = None, *,
                 out_dir: str | Path | None = None, series: str | None = None, registry=None) -> dict[str, Any]:
    """Load ``study_path`` (de-identified), pick the input series for expert ``name``, run it and write
    the outputs into ``out_dir`` (default ``./expert_<name>``). Returns the paths written, the summary
    and notes."""
    import data

    from experts.registry import default_registry

    reg = registry or default_registry()
    expert = reg.get(name)
    study = data.load_study(study_path)
    inputs = select_inputs(expert.name, expert.modalities, study, series)
    result = reg.run(name, inputs, **dict(arguments or {}))
    return write_outputs(result, inputs, Path(out_dir or f"expert_{name}"))


def select_inputs(expert: str, modalities: tuple[str, ...], study: Study, series: str | None = None) -> Volume | dict[str, Volume]:
    """The volume(s) an expert takes from ``study``: the chosen series, or for MR the four sequences by
    role, otherwise the largest series of a matching modality; ``ExpertError`` when none fits."""
    if series is not None:
        try:
            index = int(series)
        except ValueError:
            index = None
        try:
            chosen = study.get(index if index is not None else series)
        except (KeyError, IndexError) as exc:
            raise ExpertError(f"{expert}: {exc}") from None
        candidates = [chosen]
    else:
        candidates = [s for s in study.series if s.modality in modalities] or list(study.series)
    if "MR" in modalities:
        by_role: dict[str, Volume] = {}
        for s in sorted(study.by_modality("MR"), key=lambda s: -int(np.prod(s.volume.shape))):
            role = s.volume.sequence
            if role and role not in by_role:
                by_role[role] = s.volume
        if not by_role and candidates:  # no recognised sequence: the expert names what is missing
            by_role = {(c.volume.sequence or c.description or f"series {i}"): c.volume for i, c in enumerate(candidates)}
        return by_role
    return _largest(candidates).volume


def write_outputs(result: ExpertResult, inputs: Volume | Mapping[str, Volume], out: Path) -> dict[str, Any]:
    """Write findings JSON, overlay PNG and the mask (DICOM SEG, or NIfTI when there is no DICOM source)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"summary": result.summary, "notes": []}
    (out / "findings.json").write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    written["findings"] = str(out / "findings.json")
    Image.fromarray(result.render_overlay(inputs)).save(out / "overlay.png")
    written["overlay"] = str(out / "overlay.png")
    if result.label_volume is not None:
        try:
            result_seg = _seg(result)
            result_seg.save_as(out / "seg.dcm")
            written["seg"] = str(out / "seg.dcm")
        except ExpertError as exc:
            import nibabel as nib

            nib.save(nib.Nifti1Image(result.label_volume.array.astype(np.int16), result.label_volume.affine), str(out / "mask.nii.gz"))
            written["mask"] = str(out / "mask.nii.gz")
            written["notes"].append(f"no DICOM SEG: {exc}")
    return written


def _seg(result: ExpertResult):
    from experts.dicom_seg import dicom_seg

    return dicom_seg(result)


def _largest(series: list[Series]) -> Series:
    if not series:
        raise ExpertError("the study holds no image series.")
    return max(series, key=lambda s: int(np.prod(s.volume.shape)))
