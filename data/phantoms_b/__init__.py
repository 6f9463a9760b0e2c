"""A second phantom family, drawn another way than ``data.phantoms``: the cross-family test of the experts.

Same anatomy, findings, label values and truth keys as family A, but other shape primitives (signed
distances of randomly deformed 3D bodies, height fields, polar curves), texture and intensity models,
body habitus, fields of view, slice thickness and stored orientation (``data.phantoms_b.ct`` / ``mri`` /
``cxr``), written as real DICOM by family A's writer (``write_study``).

Family B is never used for training or for choosing a threshold: its held-out split (``HELDOUT_SEEDS``)
is frozen, with a SHA-256 of each case's label map and truth recorded in ``tests/data/phantoms_b_heldout.json``
so any change to a generator shows.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from data.phantoms import KINDS, PhantomCase, write_study
from data.phantoms.labels import CT_LABELS, MRI_LABELS

__all__ = ["generate", "write_study", "case_fingerprint", "HELDOUT_SEEDS", "FAMILY"]

FAMILY = "b"
# The frozen held-out test split: these seeds, in this order. Seeds outside these lists are free for a
# validation split (thresholds) should one be wanted; these never are.
HELDOUT_SEEDS: dict[str, tuple[int, ...]] = {
    "ct": tuple(range(700_000, 700_016)),
    "mri": tuple(range(710_000, 710_024)),
    "cxr": tuple(range(720_000, 720_200)),
}


def generate(kind: str, seed: int) -> PhantomCase:
    """One family B case in memory, in family A's ``PhantomCase`` shape (volumes by series, labels, truth)."""
    from data.phantoms_b.ct import generate_ct_b
    from data.phantoms_b.cxr import generate_cxr_b
    from data.phantoms_b.mri import generate_mri_b

    if kind == "ct":
        vol, labels, truth = generate_ct_b(seed)
        return PhantomCase("ct", {"CT": vol}, labels, dict(CT_LABELS), truth, int(seed))
    if kind == "mri":
        vols, labels, truth = generate_mri_b(seed)
        return PhantomCase("mri", vols, labels, dict(MRI_LABELS), truth, int(seed))
    if kind == "cxr":
        vol, truth = generate_cxr_b(seed)
        return PhantomCase("cxr", {"DX": vol}, None, {}, truth, int(seed))
    raise ValueError(f"phantom kind must be one of {KINDS}, got {kind!r}.")


def case_fingerprint(case: PhantomCase) -> str:
    """SHA-256 of a case's label map (bytes, shape, affine) and truth JSON: what the frozen split pins."""
    h = hashlib.sha256()
    if case.labels is not None:
        h.update(np.ascontiguousarray(case.labels, dtype=np.int16).tobytes())
        h.update(repr(case.labels.shape).encode())
        h.update(np.round(case.volume.affine, 4).tobytes())
    h.update(json.dumps(case.truth, sort_keys=True).encode())
    return h.hexdigest()
