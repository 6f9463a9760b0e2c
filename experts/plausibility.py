"""Plausibility checks on expert outputs: each returns the reasons (plain sentences) a result should be read as
"uncertain" — a finding the expert produced that real anatomy, physics or the model's own training makes
unlikely. An empty list means nothing is implausible; the result's tool message is then unchanged.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage

from data.study import Volume

__all__ = ["ORGAN_VOLUME_RANGE_ML", "ct_organ_volume_reasons", "ct_nodule_density_reasons", "ct_phase_reasons",
           "brain_tumour_share_reasons", "cxr_saturation_reasons", "MAX_TUMOUR_SHARE_OF_HEAD", "MAX_TUMOUR_ML", "SATURATED_PROBABILITY"]

# Adult reference volumes (mL), widened to cover normal variation and common disease: liver 1,000–2,500 mL and
# spleen 100–400 mL (CT volumetry, e.g. Heymsfield 1979, Prassopoulos 1997), kidney 100–250 mL each (Emamian
# 1993), each lung 1,000–3,500 mL at inspiration (about half of a 4–7 L total lung capacity), heart (pericardial
# contents) 400–1,000 mL. A result is uncertain only when a structure is FAR outside: below half the lower value
# (when the scan covers the whole organ) or above 1.5 x the upper value. Aorta and spine depend on the scan's
# coverage and are not checked.
ORGAN_VOLUME_RANGE_ML: dict[str, tuple[float, float]] = {
    "liver": (1000.0, 2500.0),
    "spleen": (100.0, 400.0),
    "left kidney": (100.0, 250.0),
    "right kidney": (100.0, 250.0),
    "left lung": (1000.0, 3500.0),
    "right lung": (1000.0, 3500.0),
    "heart": (400.0, 1000.0),
}
FAR_BELOW, FAR_ABOVE = 0.5, 1.5
# a "nodule" whose brightest tenth stays below this is fat (-150..-50 HU) or air, not soft tissue: the 90th percentile,
# since partial volume with aerated lung pulls a true small nodule's mean far down (to -160 HU on family A phantoms)
NODULE_MAX_FAT_HU = -60.0
ENHANCED_KIDNEY_HU = 100.0  # kidneys above this have taken up contrast (unenhanced renal parenchyma ~30 HU)
MAX_TUMOUR_SHARE_OF_HEAD = 0.2  # of the head mask (the brain alone when skull-stripped): 260-480 mL
MAX_TUMOUR_ML = 400.0  # glioma whole-tumour volumes (oedema included) rarely pass ~300 mL (BraTS training sets)
SATURATED_PROBABILITY = 0.95
MAX_SATURATED_FINDINGS = 2  # three or more findings near certainty at once: the film is likely unlike the training films


def ct_organ_volume_reasons(labels: np.ndarray, names: Mapping[int, str], volume: Volume) -> list[str]:
    """Organs far outside ``ORGAN_VOLUME_RANGE_ML``; the lower bound only for organs not cut by the scan's first or
    last slice (a partly covered organ is legitimately small)."""
    reasons = []
    vml = volume.voxel_volume_ml
    for value, name in names.items():
        if name not in ORGAN_VOLUME_RANGE_ML:
            continue
        mask = labels == value
        n = int(np.count_nonzero(mask))
        if n == 0:
            continue
        ml = n * vml
        lo, hi = ORGAN_VOLUME_RANGE_ML[name]
        cut = bool(mask[:, :, 0].any() or mask[:, :, -1].any())
        if ml > FAR_ABOVE * hi:
            reasons.append(f"{name} volume {ml:.0f} mL is far above the adult range ({lo:.0f}-{hi:.0f} mL)")
        elif ml < FAR_BELOW * lo and not cut:
            reasons.append(f"{name} volume {ml:.0f} mL is far below the adult range ({lo:.0f}-{hi:.0f} mL)")
    return reasons


def ct_nodule_density_reasons(image: np.ndarray, labels: np.ndarray, nodule_value: int) -> list[str]:
    """Lung "nodules" whose brightest voxels (90th percentile) are fat or air, not soft tissue."""
    comps, n = ndimage.label(labels == nodule_value, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    hu = np.asarray(image, dtype=np.float32)
    tops = ndimage.labeled_comprehension(hu, comps, np.arange(1, n + 1), lambda v: np.percentile(v, 90), np.float32, 0.0)
    bad = [float(t) for t in tops if t < NODULE_MAX_FAT_HU]
    if not bad:
        return []
    kind = "air" if min(bad) < -300.0 else "fat"
    return [f"{len(bad)} of {n} lung nodules have {kind} density (90th percentile {min(bad):.0f} HU), not soft tissue"]


def ct_phase_reasons(phase: str | None, aorta_hu: float | None, kidney_hu: float | None) -> list[str]:
    """A non-contrast phase read from an aorta that does not enhance while the kidneys do: the aorta mask is
    probably not on the aorta."""
    if phase == "non-contrast" and kidney_hu is not None and kidney_hu >= ENHANCED_KIDNEY_HU and aorta_hu is not None:
        return [f"contrast phase read as non-contrast from an aorta of {aorta_hu:.0f} HU while the kidneys enhance "
                f"({kidney_hu:.0f} HU): the aorta mask may be off the aorta"]
    return []


def brain_tumour_share_reasons(whole_tumour_ml: float, head_ml: float) -> list[str]:
    """A whole tumour taking an implausible share of the head."""
    if (head_ml > 0 and whole_tumour_ml > MAX_TUMOUR_SHARE_OF_HEAD * head_ml) or whole_tumour_ml > MAX_TUMOUR_ML:
        share = f" covers {100 * whole_tumour_ml / head_ml:.0f} % of the head ({head_ml:.0f} mL)," if head_ml > 0 else ""
        return [f"whole tumour {whole_tumour_ml:.0f} mL{share} more than a brain tumour plausibly is"]
    return []


def cxr_saturation_reasons(probabilities: Mapping[str, float]) -> list[str]:
    """Several findings at near-certain probability at once."""
    high = [f for f, p in probabilities.items() if p >= SATURATED_PROBABILITY]
    if len(high) > MAX_SATURATED_FINDINGS:
        return [f"probabilities saturated on {len(high)} findings at once ({', '.join(high)}): the film may differ from "
                "the films the classifier was trained on"]
    return []
