"""What the model sees of a phantom case: the rendered picture(s) and the facts visible in them.

Questions and captions must be answerable from the picture, so a CT view describes the one axial slice
it shows (organs and lesions cut by that slice, counted as 2D components), an MRI view the slice through
the tumour on all four sequences, a radiograph view the whole image. Pictures come from
``data.model_view.model_pictures``, the one function chat, ``m3 ask``, ``m3 eval`` and the app show the model,
so training and inference see the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from data.phantoms import PhantomCase
from data.phantoms.labels import CT_LABELS, CT_LESIONS, CT_ORGANS, MRI_LABELS, MRI_SEQUENCES
from data.slice_facts import ORGAN_MIN_PX, TUMOR_MIN_PX, equivalent_diameter_mm, lesion_components, midline_side
from data.model_view import model_pictures
from data.tool_text import size_category

__all__ = ["CaseView", "make_view"]


@dataclass
class CaseView:
    """Pictures of one case plus the facts they show.

    images: ``{name: (rows, cols) uint8}`` in display order; facts: visible findings (see ``make_view``);
    slice_index: the axial slice shown (None for a radiograph).
    """

    kind: str
    seed: int
    images: dict[str, np.ndarray]
    facts: dict
    truth: dict
    slice_index: int | None = None
    ambiguous: set[str] = field(default_factory=set)  # findings barely cut by the slice: never asked


def make_view(case: PhantomCase, rng: np.random.Generator) -> CaseView:
    """Choose the picture(s) of ``case`` and list what they show."""
    if case.kind == "ct":
        return _ct_view(case, rng)
    if case.kind == "mri":
        return _mri_view(case, rng)
    return _cxr_view(case)


def _ct_view(case: PhantomCase, rng: np.random.Generator) -> CaseView:
    vol, lab = case.volume, case.labels
    lesions = case.truth["lesions"]
    area = np.stack([(lab == v).sum(axis=(0, 1)) for v in range(13)])  # (13, K) pixels per label per slice
    body_k = np.flatnonzero(area[1:10].sum(0) > 0)
    lo, hi = (int(body_k[0]), int(body_k[-1])) if len(body_k) else (0, vol.shape[2] - 1)
    if lesions and rng.random() < 0.75:
        k = int(np.clip(lesions[int(rng.integers(len(lesions)))]["centre_voxel"][2], 0, vol.shape[2] - 1))
    else:
        k = int(rng.integers(lo + (hi - lo) // 6, max(lo + (hi - lo) * 5 // 6, lo + 1) + 1))
    k = min(k, vol.shape[2] - 1)
    sl = lab[:, :, k]
    px_mm2 = abs(vol.spacing[0] * vol.spacing[1])
    organs = [CT_LABELS[v] for v in CT_ORGANS if area[v, k] >= ORGAN_MIN_PX]  # the experts' "in this slice" rule
    ambiguous: set[str] = set()
    found: list[dict] = []
    for v in CT_LESIONS:
        shown, tiny = lesion_components(sl == v)  # a component too small to see is never asked about
        if tiny:
            ambiguous.add(CT_LABELS[v])
        for m in shown:
            ij = np.argwhere(m).mean(0)
            organ = _organ_around(sl, m)
            diam = equivalent_diameter_mm(m, px_mm2)
            found.append({"type": CT_LABELS[v], "organ": organ, "side": _side(organ), "midline_side": midline_side(m, vol.affine, k), "diameter_mm": round(float(diam), 1),
                          "size": size_category(diam), "area_px": int(m.sum()), "centre_px": [int(ij[0]), int(ij[1])]})
    chest = area[5, k] + area[6, k] + area[7, k]
    belly = area[1, k] + area[2, k] + area[3, k] + area[4, k]
    facts = {
        "modality": "CT", "phase": case.truth["phase"], "region": "chest" if chest > belly else "abdomen",
        "organs": organs, "lesions": found,
        "lesion_counts": {CT_LABELS[v]: sum(1 for f in found if f["type"] == CT_LABELS[v]) for v in CT_LESIONS},
        "organ_area_px": {CT_LABELS[v]: int(area[v, k]) for v in CT_ORGANS},
    }
    return CaseView("ct", case.seed, model_pictures({"CT": vol}, k).images, facts, case.truth, k, ambiguous)


def _organ_around(sl: np.ndarray, lesion: np.ndarray) -> str:
    rim = sl[ndimage.binary_dilation(lesion, iterations=2) & ~lesion]
    rim = rim[(rim > 0) & (rim < 10)]
    return CT_LABELS[int(np.bincount(rim).argmax())] if len(rim) else "unknown"


def _side(organ: str) -> str | None:
    return "left" if organ.startswith("left") else ("right" if organ.startswith("right") or organ == "liver" else None)


def _mri_view(case: PhantomCase, rng: np.random.Generator) -> CaseView:
    lab = case.labels
    per_slice = np.stack([(lab == v).sum(axis=(0, 1)) for v in (1, 2, 3)])  # (3, K)
    if case.truth["tumor_present"] and rng.random() < 0.85:
        ks = np.flatnonzero(per_slice.sum(0) > 0)
        k = int(ks[len(ks) // 2 + int(rng.integers(-len(ks) // 4, len(ks) // 4 + 1))])
    else:
        K = lab.shape[2]
        k = int(rng.integers(K // 3, 2 * K // 3 + 1))
    t1c = case.volumes["T1c"]
    px_mm2 = abs(t1c.spacing[0] * t1c.spacing[1])
    sl = lab[:, :, k]
    whole = sl > 0
    ambiguous = {"tumor"} if 0 < whole.sum() < TUMOR_MIN_PX else set()
    visible = bool(whole.sum() >= TUMOR_MIN_PX)
    sub = {MRI_LABELS[v]: int((sl == v).sum()) for v in (1, 2, 3)}
    diam = equivalent_diameter_mm(whole, px_mm2)
    side = midline_side(whole, t1c.affine, k) if visible else None
    facts = {
        "modality": "MRI", "region": "brain", "sequences": list(MRI_SEQUENCES), "tumor_visible": visible,
        "subregion_px": sub, "enhancing": visible and sub["enhancing tumor"] >= 4, "necrosis": visible and sub["necrotic core"] >= 4,
        "edema": visible and sub["edema"] >= 4, "hemisphere": side, "lobe": case.truth["lobe"] if visible else None,
        "diameter_mm": round(float(diam), 1), "size": size_category(diam) if visible else None,
    }
    images = model_pictures({seq: case.volumes[seq] for seq in MRI_SEQUENCES}, k, primary="FLAIR").images
    return CaseView("mri", case.seed, images, facts, case.truth, k, ambiguous)


def _cxr_view(case: PhantomCase) -> CaseView:
    t = case.truth
    facts = {"modality": "X-ray", "region": "chest", "view": t["view"], "findings": dict(t["findings"]),
             "laterality": dict(t["laterality"]), "ctr": t["ctr"], "details": t["details"]}
    return CaseView("cxr", case.seed, model_pictures({"DX": case.volume}).images, facts, t, None, set())
