"""What one axial slice shows of a label map, by one rule shared by the picture questions' answers
(``data.instructions.views``) and the experts' "in this slice" findings (``slice_findings``).

A CT or MRI picture is one slice of a study. A question about it ("Is a kidney cyst shown in this
slice?", "Can you see the spleen here?") is answered from the expert's mask on the slice on screen, the
same way its reference answer was made from the phantom's labels: an organ is shown when the slice
cuts at least ``ORGAN_MIN_PX`` of its pixels, a lesion type when one of its 2D components (8-connected)
has ``LESION_MIN_PX``, a brain tumour when the slice holds ``TUMOR_MIN_PX`` tumour pixels.

A question on the size or side of what the slice shows ("Is the liver tumour small, medium or large?",
"Is the renal cyst on the left or right?") is answered from the same mask (``slice_details``): a lesion's
size is the equivalent-circle diameter of its largest component on the slice, a brain tumour's that of all
its pixels there; a lesion's side is the side of the patient's midline (RAS x = 0, the scanner's isocentre,
where a patient lies centred) its component's centre lies on.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from data.tool_text import Finding, Measurement

__all__ = ["ORGAN_MIN_PX", "LESION_MIN_PX", "TUMOR_MIN_PX", "IN_SLICE", "organ_shown", "lesion_components", "tumor_shown",
           "slice_finding_name", "asks_about_shown_slice", "measured_structures", "slice_findings", "slice_details",
           "equivalent_diameter_mm", "midline_side", "lesion_side_finding", "slice_diameter"]

ORGAN_MIN_PX = 20
LESION_MIN_PX = 4
TUMOR_MIN_PX = 10
IN_SLICE = " in this slice"

# a size or side question names the picture's structure ("is the renal cyst on the left or right?"): the slice's
_SIZE_OR_SIDE = re.compile(r"\b(?:small, medium or large|on the left or (?:the )?right)\b")
# the question's own clause opens with the verb ("is this image a CT…" asks something else) and names the picture
_SHOWN = re.compile(r"^(?:is|are|can|do|does)\s+(?!this\b)[^?]*\b(?:this slice|this image|here)\b")


def organ_shown(mask2d: np.ndarray) -> bool:
    return int(np.count_nonzero(mask2d)) >= ORGAN_MIN_PX


def lesion_components(mask2d: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """The lesion's 2D components on the slice large enough to see, and whether a smaller one (too
    ambiguous to ask about) was left out."""
    comps, n = ndimage.label(np.asarray(mask2d, dtype=bool), structure=np.ones((3, 3)))
    kept, tiny = [], False
    for c in range(1, n + 1):
        m = comps == c
        if m.sum() < LESION_MIN_PX:
            tiny = True
        else:
            kept.append(m)
    return kept, tiny


def equivalent_diameter_mm(mask2d: np.ndarray, pixel_area_mm2: float) -> float:
    """The diameter of the circle with the mask's in-plane area."""
    return float(2.0 * np.sqrt(np.count_nonzero(mask2d) * pixel_area_mm2 / np.pi))


def tumor_shown(mask2d: np.ndarray) -> bool:
    return int(np.count_nonzero(mask2d)) >= TUMOR_MIN_PX


def slice_finding_name(structure: str) -> str:
    """``"kidney cyst"`` → ``"kidney cyst in this slice"`` (the finding, and ``[[kidney cyst in this slice?]]``)."""
    return structure + IN_SLICE


def asks_about_shown_slice(question: str) -> bool:
    """Whether ``question`` is a yes / no question about the picture on screen ("Could you tell me: is a
    kidney cyst shown in this slice?", "Can you see the spleen here?") or asks the size or side of what it
    shows ("Is the liver tumour small, medium or large?"), not about the whole study."""
    text = " ".join(question.replace("<image>", " ").lower().split())
    if _SIZE_OR_SIDE.search(text.split("?")[0]):
        return True
    clause = re.split(r"[:,;]\s*", text.split("?")[0])[-1]  # after a lead-in
    return bool(_SHOWN.search(clause))


def measured_structures(measurements: Sequence) -> list[tuple[str, bool]]:
    """``(structure, is a lesion)`` for each structure a result measured by volume or count, in order:
    those its "in this slice" findings are about (not the aorta and liver read for the contrast phase).
    A counted structure is a lesion type."""
    counted = {m.structure for m in measurements if m.quantity == "count"}
    names = dict.fromkeys(m.structure for m in measurements if m.quantity in ("volume", "count"))
    return [(name, name in counted) for name in names]


def slice_findings(expert: str, label_slice: np.ndarray, label_names: Mapping[int, str], measurements: Sequence) -> list[Finding]:
    """The "<structure> in this slice" findings of one axial slice of an expert's label map.

    ct_segmentation: one per measured structure its labels hold (``measured_structures``), lesion types
    by the lesion rule, the rest by the organ rule; mri_brain_tumor: ``tumor in this slice``; other
    experts: none."""
    label_slice = np.asarray(label_slice)
    if expert == "mri_brain_tumor":
        return [Finding(slice_finding_name("tumor"), tumor_shown(label_slice > 0))]
    if expert != "ct_segmentation":
        return []
    by_name = {name: value for value, name in label_names.items()}
    out = []
    for name, lesion in measured_structures(measurements):
        if name in by_name:
            mask = label_slice == by_name[name]
            out.append(Finding(slice_finding_name(name), bool(lesion_components(mask)[0]) if lesion else organ_shown(mask)))
    return out


def midline_side(mask2d: np.ndarray, affine: np.ndarray, slice_index: int) -> str:
    """"left" or "right": the side of the patient's midline (RAS x = 0) the mask's centre lies on."""
    i, j = np.argwhere(mask2d).mean(0)
    return "left" if float((np.asarray(affine, dtype=np.float64) @ np.array([i, j, slice_index, 1.0]))[0]) < 0 else "right"


def lesion_side_finding(structure: str, side: str) -> Finding:
    """``("kidney cyst", "right")`` → the finding "kidney cyst in this slice on the right" (``[[kidney cyst in this slice side]]``)."""
    return Finding(f"{slice_finding_name(structure)} on the {side}", True)


def slice_diameter(structure: str, diameter_mm: float) -> Measurement:
    """The size of ``structure`` on the slice: "liver tumor in this slice largest diameter" (``[[... size]]``)."""
    return Measurement(slice_finding_name(structure), "largest diameter", round(float(diameter_mm), 1), "mm")


def slice_details(expert: str, label_slice: np.ndarray, label_names: Mapping[int, str], measurements: Sequence,
                  affine: np.ndarray, slice_index: int) -> tuple[list[Finding], list[Measurement]]:
    """The sides and sizes of what axial slice ``slice_index`` (``label_slice``, ``[column, row]``, on the
    grid ``affine`` maps to RAS mm) shows: for each lesion type the result measured, one "<type> in this
    slice on the <side>" finding per side its seen components lie on and its largest component's diameter;
    for a brain tumour, its diameter on the slice."""
    label_slice = np.asarray(label_slice)
    affine = np.asarray(affine, dtype=np.float64)
    px_mm2 = float(abs(np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 1])))
    if expert == "mri_brain_tumor":
        whole = label_slice > 0
        return [], ([slice_diameter("tumor", equivalent_diameter_mm(whole, px_mm2))] if tumor_shown(whole) else [])
    if expert != "ct_segmentation":
        return [], []
    by_name = {name: value for value, name in label_names.items()}
    sides: list[Finding] = []
    sizes: list[Measurement] = []
    for name, lesion in measured_structures(measurements):
        if not lesion or name not in by_name:
            continue
        comps = lesion_components(label_slice == by_name[name])[0]
        if not comps:
            continue
        seen = {midline_side(m, affine, slice_index) for m in comps}
        sides += [lesion_side_finding(name, side) for side in ("left", "right") if side in seen]
        sizes.append(slice_diameter(name, max(equivalent_diameter_mm(m, px_mm2) for m in comps)))
    return sides, sizes
