"""The draft report: Findings / Impression grounded in the expert results, edited by the clinician, then
exported as Markdown, PDF (fpdf2), DICOM Comprehensive SR (highdicom) and the masks as DICOM SEG.

A draft comes from the language model when one is loaded (it is given only the experts' results as
text, and every number it writes is checked against them), otherwise from a fixed template over the
same results. Nothing here carries PHI: the study is de-identified before it reaches the app.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from data.errors import M3Error
from experts.base import ExpertResult, tool_message

__all__ = [
    "Report",
    "ReportError",
    "draft_from_results",
    "draft_with_model",
    "to_markdown",
    "write_markdown",
    "write_pdf",
    "write_sr",
    "write_seg",
    "REPORT_PROMPT",
]

DISCLAIMER = "Draft prepared by m3 from expert model results. It must be reviewed and signed by a clinician."
REPORT_PROMPT = (
    "Write a short radiology report for this {modality} series with exactly two sections, 'Findings:' and "
    "'Impression:'. Use only these expert results; quote their numbers with units and do not invent any:\n{results}"
)


class ReportError(M3Error):
    """A report could not be drafted or exported; the message says what is missing and what to do."""


@dataclass
class Report:
    """A report draft. ``results`` are ``ExpertResult.to_json()`` dicts (no arrays); ``drafted_by`` names
    the model or "expert results template"; ``flags`` list numbers the model wrote that no expert gave."""

    findings: str
    impression: str
    study_uid: str = ""  # de-identified
    series_uid: str = ""  # de-identified
    series_description: str = ""
    modality: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    drafted_by: str = "expert results template"
    author: str = ""
    flags: list[str] = field(default_factory=list)
    created: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))

    @property
    def expert_versions(self) -> dict[str, str]:
        return {r["expert"]: r.get("version", "") for r in self.results}


def draft_from_results(results: Iterable[ExpertResult], modality: str = "",
                       titles: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(findings, impression) written from the results alone: one findings line per expert result, named by
    its title in ``titles`` (expert name → "CT segmentation"; default the name), with its measurements and
    findings; an impression naming what was found (lesions, positive findings) or that nothing was."""
    results = list(results)
    if not results:
        raise ReportError("no expert results for this series yet; run an expert (or ask a question) before drafting a report.")
    lines: list[str] = []
    positives: list[str] = []
    for r in results:
        parts = [m.text() for m in r.measurements]
        parts += [
            f"{f.label}: {'present' if f.present else 'absent'}" + (f" (p={f.probability:.2f})" if f.probability is not None else "")
            for f in r.findings
        ]
        name = (titles or {}).get(r.expert, r.expert)
        lines.append(f"- {name}: " + ("; ".join(parts) if parts else (r.summary or "no measurable finding")) + ".")
        positives += [f.label for f in r.findings if f.present]
        positives += [m.structure for m in r.measurements if _is_lesion(m.structure) and m.value > 0 and m.quantity in ("volume", "count")]
    findings = "\n".join(lines)
    seen = list(dict.fromkeys(positives))
    if seen:
        impression = f"Expert models report: {', '.join(seen)}. Correlate clinically and with the images."
    else:
        impression = f"No abnormality reported by the expert models on this {modality or 'series'}."
    return findings, impression


def draft_with_model(backend: Any, results: Iterable[ExpertResult], modality: str = "",
                     titles: Mapping[str, str] | None = None) -> tuple[str, str, list[str]]:
    """(findings, impression, flags) from ``backend`` (a ``ChatBackend``) given only the expert results
    (``titles``: as for ``draft_from_results``).

    If the model's text has no Findings/Impression sections, the template draft is used and a flag
    says so; numbers the model wrote that no expert gave are flagged (they stay visible for editing).
    """
    results = list(results)
    if not results:
        raise ReportError("no expert results for this series yet; run an expert (or ask a question) before drafting a report.")
    prompt = REPORT_PROMPT.format(modality=modality or "imaging", results="\n".join(tool_message(r) for r in results))
    text = "".join(backend.stream_chat([{"role": "user", "content": prompt}], images=None, tools=None))
    sections = _split_sections(text)
    if sections is None:
        findings, impression = draft_from_results(results, modality, titles)
        return findings, impression, ["the model's draft had no Findings/Impression sections; drafted from the expert results instead"]
    findings, impression = sections
    from vlm.safety import ungrounded_numbers

    sources = [tool_message(r) for r in results]
    flags = [f"number not given by any expert: {n}" for n in ungrounded_numbers(findings + "\n" + impression, sources)]
    return findings, impression, flags


def to_markdown(report: Report) -> str:
    """The report as Markdown: header table, Findings, Impression, expert versions, disclaimer."""
    rows = [
        ("Study (de-identified)", report.study_uid),
        ("Series", f"{report.series_description} ({report.modality})".strip()),
        ("Drafted by", report.drafted_by),
        ("Experts", ", ".join(f"{k} {v}".strip() for k, v in report.expert_versions.items()) or "none"),
        ("Created", report.created.strftime("%Y-%m-%d %H:%M UTC")),
    ]
    if report.author:
        rows.append(("Edited by", report.author))
    lines = ["# Imaging report (draft)", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md_cell(v)} |" for k, v in rows]
    lines += ["", "## Findings", "", report.findings.strip(), "", "## Impression", "", report.impression.strip(), ""]
    if report.flags:
        lines += ["## Checks", ""] + [f"- {f}" for f in report.flags] + [""]
    lines += [f"_{DISCLAIMER}_", ""]
    return "\n".join(lines)


def write_markdown(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(to_markdown(report), encoding="utf-8")
    return path


def write_pdf(report: Report, path: str | Path, images: Iterable[np.ndarray] = ()) -> Path:
    """The report as a one- or two-page PDF (A4) with the overlay pictures ``images`` (RGB uint8)."""
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    family = _unicode_font(pdf)
    pdf.set_font(family, size=16)
    pdf.cell(0, 10, "Imaging report (draft)", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)
    for key, value in (
        ("Study (de-identified)", report.study_uid),
        ("Series", f"{report.series_description} ({report.modality})"),
        ("Drafted by", report.drafted_by),
        ("Experts", ", ".join(f"{k} {v}".strip() for k, v in report.expert_versions.items()) or "none"),
        ("Created", report.created.strftime("%Y-%m-%d %H:%M UTC")),
    ):
        pdf.multi_cell(0, 5, f"{key}: {value}", new_x="LMARGIN", new_y="NEXT")
    for title, body in (("Findings", report.findings), ("Impression", report.impression)):
        pdf.ln(3)
        pdf.set_font(family, size=13)
        pdf.cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, size=11)
        pdf.multi_cell(0, 6, body.strip() or "-", new_x="LMARGIN", new_y="NEXT")
    if report.flags:
        pdf.ln(2)
        pdf.set_font(family, size=9)
        pdf.multi_cell(0, 5, "Checks: " + "; ".join(report.flags), new_x="LMARGIN", new_y="NEXT")
    for picture in images:
        pdf.ln(3)
        img = Image.fromarray(np.asarray(picture, dtype=np.uint8))
        width_mm = min(170.0, 170.0 * img.width / max(img.width, img.height) * 1.3)
        pdf.image(img, w=width_mm)
    pdf.ln(3)
    pdf.set_font(family, size=8)
    pdf.multi_cell(0, 4, DISCLAIMER, new_x="LMARGIN", new_y="NEXT")
    path = Path(path)
    pdf.output(str(path))
    return path


def write_sr(report: Report, path: str | Path, volume: Any, segmentations: Iterable[str | Path] = ()) -> Path:
    """The report as a DICOM Comprehensive SR (highdicom): Findings and Impression as TEXT items and every
    expert measurement as a NUM item (UCUM units) naming its structure, in the de-identified study;
    the source images and the SEG objects ``segmentations`` are its evidence."""
    import highdicom as hd
    import pydicom
    from highdicom.sr import CodedConcept, ComprehensiveSR, ContainerContentItem, NumContentItem, TextContentItem

    contains = hd.sr.RelationshipTypeValues.CONTAINS
    evidence = _source_datasets(volume) + [pydicom.dcmread(str(p), stop_before_pixels=True) for p in segmentations]
    root = ContainerContentItem(name=CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    items = [TextContentItem(CodedConcept("121071", "DCM", "Finding"), report.findings.strip() or "-", contains),
             TextContentItem(CodedConcept("121073", "DCM", "Impression"), report.impression.strip() or "-", contains)]
    for result in report.results:
        for m in result.get("measurements", []):
            concept, unit = _num_codes(m["quantity"], m["unit"])
            if concept is None:
                continue
            num = NumContentItem(concept, float(m["value"]), unit, relationship_type=contains)
            num.ContentSequence = [TextContentItem(CodedConcept("363698007", "SCT", "Finding site"), m["structure"],
                                                   hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)]
            items.append(num)
    root.ContentSequence = items
    sr = ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="m3", is_complete=True, is_final=False, is_verified=False,
        series_description="m3 draft report", specific_character_set="ISO_IR 192",  # UTF-8 text
    )
    path = Path(path)
    sr.save_as(str(path))
    return path


def write_seg(results: Iterable[ExpertResult], volume: Any, folder: str | Path) -> list[Path]:
    """One DICOM SEG (``experts.dicom_seg``) per result whose mask lies on ``volume``'s grid."""
    from experts.base import ExpertError
    from experts.dicom_seg import dicom_seg

    _source_datasets(volume)  # raises for non-DICOM sources, with the message the user sees
    out = []
    for n, result in enumerate(results, start=1):
        if result.label_volume is None or result.label_volume.shape != volume.shape or not np.any(result.label_volume.array):
            continue
        try:
            seg = dicom_seg(result, volume)
        except ExpertError as exc:
            raise ReportError(f"the {result.expert} mask could not be written as DICOM SEG: {exc}") from None
        path = Path(folder) / f"{result.expert}_seg_{n}.dcm"
        seg.save_as(str(path))
        out.append(path)
    return out


# --- private helpers -------------------------------------------------------------------------------


def _split_sections(text: str) -> tuple[str, str] | None:
    match = re.search(r"findings\s*:\s*(.*?)\s*impression\s*:\s*(.*)", text, flags=re.IGNORECASE | re.DOTALL)
    if not match or not match.group(1).strip() or not match.group(2).strip():
        return None
    return match.group(1).strip(), match.group(2).strip()


def _is_lesion(structure: str) -> bool:
    return any(word in structure.lower() for word in ("tumor", "tumour", "nodule", "cyst", "lesion", "enhancing", "necrotic", "edema"))


def _md_cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _unicode_font(pdf: Any) -> str:
    """Register DejaVu Sans (shipped with matplotlib, so always present) for µ, ³, — and other glyphs."""
    from matplotlib import get_data_path

    font = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    pdf.add_font("DejaVu", "", str(font))
    return "DejaVu"


def _source_datasets(volume: Any) -> list[Any]:
    """The de-identified source images of ``volume`` as reference datasets (``experts.dicom_seg``)."""
    from experts.base import ExpertError
    from experts.dicom_seg import reference_datasets

    try:
        return reference_datasets(volume)
    except ExpertError:
        raise ReportError("DICOM SR and SEG need a DICOM source series; this one came from NIfTI or an image, so "
                          "only Markdown and PDF were written.") from None


def _num_codes(quantity: str, unit: str) -> tuple[Any, Any]:
    """SNOMED concept and UCUM unit for a measurement, or (None, None) for quantities the SR skips."""
    from highdicom.sr import CodedConcept

    concepts = {"volume": ("118565006", "Volume"), "diameter": ("81827009", "Diameter"), "count": ("246205007", "Quantity")}
    units = {"mL": ("ml", "milliliter"), "mm": ("mm", "millimeter"), "count": ("{#}", "count"), "": ("1", "no units")}
    if quantity not in concepts or unit not in units:
        return None, None
    code, meaning = concepts[quantity]
    ucum, unit_meaning = units[unit]
    return CodedConcept(code, "SCT", meaning), CodedConcept(ucum, "UCUM", unit_meaning)
