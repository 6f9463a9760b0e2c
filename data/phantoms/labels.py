"""Label maps and finding names shared by the phantom generators, the experts and the VLM data.

One place, so a mask value means the same structure everywhere.
"""

from __future__ import annotations

__all__ = [
    "FINDING_SYNONYMS",
    "CT_LABELS",
    "CT_ORGANS",
    "CT_LESIONS",
    "CT_TARGETS",
    "ct_target_values",
    "MRI_LABELS",
    "CXR_FINDINGS",
    "MRI_SEQUENCES",
]

# ct_segmentation: value -> name
CT_LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "left kidney",
    4: "right kidney",
    5: "left lung",
    6: "right lung",
    7: "heart",
    8: "aorta",
    9: "spine",
    10: "liver tumor",
    11: "lung nodule",
    12: "kidney cyst",
}
CT_ORGANS = [1, 2, 3, 4, 5, 6, 7, 8, 9]
CT_LESIONS = [10, 11, 12]
# ct_segmentation's ``targets`` argument: a group or a single structure
CT_TARGETS = ["everything", "organs", "lesions", *[CT_LABELS[v] for v in CT_LESIONS], *[CT_LABELS[v] for v in CT_ORGANS]]

# mri_brain_tumor (BraTS roles; BraTS itself numbers enhancing tumour 4)
MRI_LABELS: dict[int, str] = {1: "necrotic core", 2: "edema", 3: "enhancing tumor"}
MRI_SEQUENCES = ("T1", "T1c", "T2", "FLAIR")

# cxr_classification, multi-label
CXR_FINDINGS = ("cardiomegaly", "pleural effusion", "nodule", "pneumothorax", "consolidation")


def ct_target_values(targets: str | list[str]) -> list[int]:
    """Label values selected by ``ct_segmentation``'s ``targets`` argument (a choice or a list of them)."""
    by_name = {n: v for v, n in CT_LABELS.items()}
    groups = {"everything": list(CT_LABELS), "organs": list(CT_ORGANS), "lesions": list(CT_LESIONS)}
    chosen: list[int] = []
    for t in [targets] if isinstance(targets, str) else list(targets):
        if t in groups:
            values = groups[t]
        elif t in by_name:
            values = [by_name[t]]
        else:
            raise ValueError(f"targets must be among {CT_TARGETS}, got {t!r}.")
        chosen += [v for v in values if v not in chosen]
    return sorted(chosen)


# The words each finding goes by in questions: the question generators phrase with them, and the reference
# constraint reads a question's finding through them ("collapsed lung" → pneumothorax).
FINDING_SYNONYMS: dict[str, tuple[str, ...]] = {
    "liver tumor": ("liver tumor", "liver tumour", "liver lesion", "hepatic tumor", "hepatic mass", "liver mass"),
    "lung nodule": ("lung nodule", "pulmonary nodule", "nodule in the lung", "lung lesion"),
    "kidney cyst": ("kidney cyst", "renal cyst", "cyst in the kidney", "cystic renal lesion"),
    "pleural effusion": ("pleural effusion", "effusion", "pleural fluid collection"),
    "pneumothorax": ("pneumothorax", "collapsed lung", "pleural air collection"),
    "consolidation": ("consolidation", "airspace opacity", "consolidated lung"),
    "cardiomegaly": ("cardiomegaly", "an enlarged heart", "enlargement of the heart"),
    "nodule": ("nodule", "pulmonary nodule", "nodular opacity"),
    "edema": ("edema", "oedema", "peritumoral edema", "vasogenic edema"),
    "tumor": ("tumor", "tumour", "mass", "lesion"),
}
