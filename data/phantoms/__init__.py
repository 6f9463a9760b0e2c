"""Seeded synthetic studies with ground truth: abdominal/chest CT, brain MRI, chest radiographs.

``generate(kind, seed)`` builds a case in memory (volumes, label map, truth); ``write_study`` writes it as
real DICOM plus ``labels.nii.gz`` and ``truth.json``; ``synthesize`` does both for ``n`` seeds.

On disk, a study folder holds::

    dicom/<SERIES>/IM00001.dcm ...   one folder per series (CT | T1 T1c T2 FLAIR | DX)
    labels.nii.gz                    int16 label map on the volumes' grid (CT and MRI only)
    truth.json                       the case's ground truth, series UIDs and label names
    patient.json                     the fake identity written into the headers (for de-id tests)

The ground truth sits beside ``dicom/`` (not inside it), so ``load_study(study / "dicom")`` reads only
the images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from data.phantoms.labels import CT_LABELS, MRI_LABELS
from data.study import Volume

__all__ = ["PhantomCase", "generate", "write_study", "study_files", "synthesize", "KINDS", "DICOM_DIRNAME"]

KINDS = ("ct", "mri", "cxr")
DICOM_DIRNAME = "dicom"


@dataclass
class PhantomCase:
    """One synthetic case.

    kind: "ct" | "mri" | "cxr"; volumes: ct {"CT": v}, mri {"T1", "T1c", "T2", "FLAIR"}, cxr {"DX": v};
    labels: int16 label map on the volumes' grid (CT_LABELS / MRI_LABELS values) or None for cxr;
    label_names: value → name; truth: JSON-able ground truth; seed: what made it.
    """

    kind: str
    volumes: dict[str, Volume]
    labels: np.ndarray | None
    label_names: dict[int, str]
    truth: dict
    seed: int

    @property
    def volume(self) -> Volume:
        """The main volume (CT, T1c or DX)."""
        return self.volumes.get("CT") or self.volumes.get("T1c") or self.volumes["DX"]


def study_files(study_dir: str | Path) -> list[Path]:
    """The DICOM files of a study written by ``write_study`` (images only, not the truth files), in name order:
    what an upload of that study hands to ``data.load_study``."""
    return sorted(p for p in (Path(study_dir) / DICOM_DIRNAME).rglob("*") if p.is_file())


def generate(kind: str, seed: int, **options) -> PhantomCase:
    """Build one phantom case in memory (no files). ``options`` are fields of CTOptions / MRIOptions /
    CXROptions, e.g. ``generate("ct", 3, shape=(512, 512, 300), phase="arterial")``."""
    from data.phantoms.ct import CTOptions, generate_ct
    from data.phantoms.cxr import CXROptions, generate_cxr
    from data.phantoms.mri import MRIOptions, generate_mri

    option_types = {"ct": CTOptions, "mri": MRIOptions, "cxr": CXROptions}
    if kind not in option_types:
        raise ValueError(f"phantom kind must be one of {KINDS}, got {kind!r}.")
    allowed = {f.name for f in fields(option_types[kind])}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown {kind} phantom option(s) {sorted(unknown)}; allowed: {sorted(allowed)}.")
    opts = option_types[kind](**options)
    if kind == "ct":
        vol, labels, truth = generate_ct(seed, opts)
        return PhantomCase("ct", {"CT": vol}, labels, dict(CT_LABELS), truth, int(seed))
    if kind == "mri":
        vols, labels, truth = generate_mri(seed, opts)
        return PhantomCase("mri", vols, labels, dict(MRI_LABELS), truth, int(seed))
    vol, truth = generate_cxr(seed, opts)
    return PhantomCase("cxr", {"DX": vol}, None, {}, truth, int(seed))


def write_study(case: PhantomCase, out_dir: str | Path, *, patient: dict | None = None, photometric: str = "MONOCHROME2") -> Path:
    """Write ``case`` as a study folder (layout in the module docstring); returns the folder.

    The case's volumes get the written Study / Series UIDs (``study_uid``, ``series_uid``).

    patient: DICOM keyword → value overriding the fake identity drawn from the case's seed.
    photometric: for radiographs, "MONOCHROME1" stores inverted pixels (readers must invert back).
    """
    import nibabel as nib

    from data.phantoms.dicom_writer import fake_patient, series_uids, write_series

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = fake_patient(case.seed)
    identity.update(patient or {})
    names = list(case.volumes)
    uids = series_uids(case.seed, case.kind, names)
    study_desc = {"ct": "CT " + case.truth.get("body_region", "").upper(), "mri": "MRI BRAIN WITH AND WITHOUT CONTRAST", "cxr": "XR CHEST PA"}[case.kind]
    rng = np.random.default_rng([case.seed, 0xF11E])
    series = {}
    for number, name in enumerate(names, start=1):
        vol = case.volumes[name]
        vol.study_uid, vol.series_uid = uids["study"], uids[name]
        folder = out / DICOM_DIRNAME / name
        write_series(vol, folder, patient=identity, study_uid=uids["study"], series_uid=uids[name], frame_uid=uids["frame"],
                     series_number=number, study_description=study_desc, photometric=photometric,
                     name_order=rng.permutation(vol.shape[2]))
        series[name] = {"series_uid": uids[name], "description": vol.description, "dir": f"{DICOM_DIRNAME}/{name}", "n_files": vol.shape[2]}
    if case.labels is not None:
        ref = case.volume
        nib.save(nib.Nifti1Image(case.labels.astype(np.int16), ref.affine), str(out / "labels.nii.gz"))
    record = dict(case.truth)
    record.update({"study_uid": uids["study"], "series": series, "label_names": {str(k): v for k, v in case.label_names.items()},
                   "labels_file": "labels.nii.gz" if case.labels is not None else None})
    (out / "truth.json").write_text(json.dumps(record, indent=1))
    (out / "patient.json").write_text(json.dumps(identity, indent=1))
    return out


def synthesize(kind: str, n: int, out: str | Path, seed: int = 0, *, progress: bool = False, **options) -> list[Path]:
    """Write ``n`` studies of ``kind`` with seeds ``seed .. seed+n-1`` into ``out/<kind>_<seed>``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    root = Path(out)
    seeds = range(seed, seed + n)
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc=f"synth {kind}", unit="study")
    return [write_study(generate(kind, s, **options), root / f"{kind}_{s:06d}") for s in seeds]
