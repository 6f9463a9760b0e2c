"""What the page's controls do: load a study, pick a series, move through it, run an expert, ask, draft
and export a report. Each method is one Gradio event; ``app.server`` wires them to components.

Every method takes the browser session's ``SessionState`` and returns it with the components' new
values, so nothing is shared between sessions except the loaded models.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np

from app.audit import AuditLog, AuditRecord
from app.chat import ChatEngine, expert_inputs, result_message
from app.report import Report, ReportError, draft_from_results, draft_with_model, write_markdown, write_pdf
from app.session import SessionState
from app.viewer import PLANES, default_window, preset_window, render_view, window_presets
from data.display import native_axial_index
from data.errors import IngestError
from experts.base import ExpertError
from vlm.tools import ToolCallError

__all__ = ["UploadLimits", "AppEvents", "EXAMPLES"]

log = logging.getLogger(__name__)

# example buttons: label → phantom kind for data.phantoms.generate
EXAMPLES: dict[str, str] = {"Example CT": "ct", "Example brain MRI": "mri", "Example chest X-ray": "cxr"}
EXAMPLE_SEED = 7


@dataclass
class UploadLimits:
    max_files: int = 5000
    max_upload_mb: int = 2048


class AppEvents:
    """The app's event functions over shared, read-only services (models, registry, audit log)."""

    def __init__(self, engine: ChatEngine, audit: AuditLog, limits: UploadLimits) -> None:
        self.engine = engine
        self.audit = audit
        self.limits = limits

    # -- study --------------------------------------------------------------------------------------
    def upload(self, files: Any, state: SessionState, request: gr.Request, progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Check the upload against the limits, ingest and de-identify it, show the first series. The raw
        uploaded files (which may carry PHI) stay only in Gradio's upload cache, which the app empties of
        files older than 15 minutes (``delete_cache`` in ``app.server``): the cache is shared by content
        hash, so deleting a file at once would break another session uploading the same file."""
        paths = [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in _as_list(files)]
        if not paths:
            return self.study_outputs(state, "Choose DICOM files, a folder, a .zip, a NIfTI file or an image to upload.")
        if len(paths) > self.limits.max_files:
            msg = (f"Upload refused: {len(paths)} files is more than the limit of {self.limits.max_files}. "
                   "Upload one series at a time or a .zip of the study.")
            return self.study_outputs(state, msg)
        total_mb = sum(p.stat().st_size for p in paths if p.exists()) / 2**20
        if total_mb > self.limits.max_upload_mb:
            msg = (f"Upload refused: {total_mb:.0f} MB is more than the limit of {self.limits.max_upload_mb} MB. "
                   "Upload fewer series, or ask the administrator to raise limits.max_upload_mb.")
            return self.study_outputs(state, msg)
        progress(0.05, desc=f"Reading and de-identifying {len(paths)} file(s)")
        return self._ingest(paths, state, request, progress)

    def example(self, label: str, state: SessionState, request: gr.Request, progress=gr.Progress(track_tqdm=True)) -> tuple:
        """Generate the example phantom study ``label`` as DICOM files and open it like an upload."""
        from data.phantoms import DICOM_DIRNAME, generate, write_study

        kind = EXAMPLES[label]
        progress(0.05, desc=f"Generating the {label.lower()}")
        folder = state.workdir / f"example-{kind}-{int(time.time() * 1000)}"
        folder.mkdir(parents=True)
        study_dir = write_study(generate(kind, seed=EXAMPLE_SEED), folder)
        paths = sorted(p for p in (study_dir / DICOM_DIRNAME).rglob("*") if p.is_file())  # images only, not the truth files
        return self._ingest(paths, state, request, progress)

    def _ingest(self, paths: list[Path], state: SessionState, request: gr.Request, progress: Any) -> tuple:
        from data import load_study

        t0 = time.perf_counter()
        try:
            study = load_study([str(p) for p in paths], progress=True)
        except IngestError as exc:
            return self.study_outputs(state, f"Could not load the upload: {exc}")
        progress(0.9, desc="Preparing the viewer")
        return self.show_study(study, state, request, t0)

    def show_study(self, study: Any, state: SessionState, request: gr.Request, started: float, *, event: str = "ingest",
                   source: str = "the upload") -> tuple:
        """Open an ingested, de-identified ``study`` (an upload, an example, a PACS study) in the session:
        audit it by its de-identified UID and return the study panel's outputs (series list first).
        ``started``: ``time.perf_counter()`` when loading began; ``event``: the audit event name."""
        if not study.series:
            problems = "; ".join(f"{s.name}: {s.reason}" for s in study.skipped[:5]) or "no image data found"
            return self.study_outputs(state, f"No image series in {source} ({problems}).")
        state.user = _user(request)
        state.set_study(study)
        self.audit.write(AuditRecord(user=state.user, session=state.id, study_uid=study.uid, series_uid="",
                                     question="", answer=f"{len(study.series)} series", model="", event=event,
                                     seconds=time.perf_counter() - started))
        notes = [f"Loaded {len(study.series)} series (de-identified) in {time.perf_counter() - started:.1f} s."]
        if study.skipped:
            notes.append(f"{len(study.skipped)} object(s) skipped: " + "; ".join(f"{s.name} ({s.reason})" for s in study.skipped[:3]))
        if study.errors:
            notes.append(f"{len(study.errors)} file(s) could not be read: " + "; ".join(str(e) for e in study.errors[:3]))
        return self.study_outputs(state, " ".join(notes))

    def select_series(self, index: int | None, state: SessionState) -> tuple:
        if state.study is not None and index is not None:
            state.select_series(int(index))
        return (state, *self._viewer_outputs(state), state.history, *self._window_outputs(state))

    def study_outputs(self, state: SessionState, message: str) -> tuple:
        """(state, series table, series dropdown, status ``message``, viewer × 5, chat, window × 3)."""
        rows = [s.summary_row() for s in state.study.series] if state.study else []
        table = [[r["series"], r["modality"], r["description"], r["shape"], r["spacing_mm"], r["files"]] for r in rows]
        choices = [(f"{i + 1}. {r['modality']} {r['description']} ({r['shape']})", i) for i, r in enumerate(rows)]
        dropdown = gr.update(choices=choices, value=state.series_index if choices else None)
        return (state, table, dropdown, message, *self._viewer_outputs(state), state.history, *self._window_outputs(state))

    # -- viewer -------------------------------------------------------------------------------------
    def set_plane(self, plane: str, state: SessionState) -> tuple:
        state.view.plane = plane if plane in PLANES else "axial"
        return (state, *self._viewer_outputs(state))

    def set_slice(self, index: float, state: SessionState) -> tuple:
        state.view.slices[state.view.plane] = int(index) - 1  # the slider counts from 1
        return (state, *self._viewer_outputs(state))

    def set_preset(self, preset: str, state: SessionState) -> tuple:
        vol = state.volume
        if vol is not None and preset in window_presets(vol):
            state.view.preset = preset
            state.view.window = None if preset == "default" else preset_window(vol, preset)
        return (state, *self._viewer_outputs(state), *self._window_outputs(state))

    def set_window(self, centre: float | None, width: float | None, state: SessionState) -> tuple:
        if state.volume is not None and centre is not None and width:
            state.view.window = (float(centre), max(float(width), 1.0))
            state.view.preset = "manual"
        return (state, *self._viewer_outputs(state))

    def set_overlay(self, opacity: float, shown: str | None, state: SessionState) -> tuple:
        state.view.opacity = float(opacity)
        keys = {_result_label(k): k for k in state.results}
        state.active_result = keys.get(shown) if shown else None
        return (state, *self._viewer_outputs(state))

    def _viewer_outputs(self, state: SessionState) -> tuple:
        """(image, caption, legend, slice slider, overlay dropdown)."""
        vol = state.volume
        if vol is None:
            empty = gr.update(minimum=1, maximum=2, value=1, interactive=False)
            return (None, "No study loaded.", "", empty, gr.update(choices=[], value=None))
        plane = state.view.plane if not vol.is_2d else "axial"
        result = state.shown_result
        index = state.view.slices.get(plane)
        if index is None and result is not None and result.label_volume is not None and result.label_volume.shape == vol.shape:
            index = _busiest_slice(vol, result, plane)
        view = render_view(vol, plane, index, state.view.window, result, state.view.opacity)
        state.view.slices[plane] = view.index
        # a 2D image has one slice: the slider stays (Gradio needs maximum > minimum) but is disabled
        slider = gr.update(minimum=1, maximum=max(view.count, 2), value=view.index + 1, step=1, interactive=view.count > 1)
        labels = [_result_label(k) for k in state.series_keys() if state.results[k].label_volume is not None]
        overlay = gr.update(choices=labels, value=_result_label(state.active_result) if state.active_result else None)
        return (_picture_file(state, view.image), view.caption, view.legend, slider, overlay)

    def _window_outputs(self, state: SessionState) -> tuple:
        """(preset dropdown, centre, width)."""
        vol = state.volume
        if vol is None:
            return (gr.update(choices=[], value=None), None, None)
        centre, width = state.view.window or default_window(vol)
        choices = window_presets(vol) + (["manual"] if state.view.preset == "manual" else [])
        return (gr.update(choices=choices, value=state.view.preset), centre, width)

    # -- experts and chat ---------------------------------------------------------------------------
    def run_expert(self, name: str, state: SessionState, request: gr.Request, progress=gr.Progress()) -> tuple:
        """Run expert ``name`` on the series on screen; its result joins the chat as a step and the viewer."""
        if state.series is None:
            gr.Warning("Load a study first.")
            return (state, state.history, *self._viewer_outputs(state))
        progress(0.1, desc=f"Running {name}")
        t0 = time.perf_counter()
        state.history = state.history + [{"role": "user", "content": f"Run {name} on this series."}]
        try:
            inputs = expert_inputs(self.engine.registry.get(name), state.study, state.series)
            result = state.cached_result(name, {}, inputs) or self.engine.registry.run(name, inputs)
        except (ExpertError, ToolCallError) as exc:
            state.history = state.history + [result_message(name, {}, None, str(exc), time.perf_counter() - t0)]
            return (state, state.history, *self._viewer_outputs(state))
        state.add_result(result, inputs)
        state.view.slices.pop(state.view.plane, None)  # jump to the slice showing most of the mask
        state.history = state.history + [result_message(name, result.arguments, result, None, result.seconds)]
        self.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid=state.study.uid,
                                     series_uid=state.series.uid, question=f"[button] run {name}", answer=result.summary,
                                     model="", expert_versions={name: result.version}, event="expert_run",
                                     tool_calls=[{"name": name, "arguments": result.arguments, "result": result.to_json(),
                                                  "error": None, "seconds": round(result.seconds, 3)}],
                                     seconds=time.perf_counter() - t0))
        return (state, state.history, *self._viewer_outputs(state))

    def ask(self, question: str, state: SessionState, request: gr.Request) -> Iterator[tuple]:
        """Stream the answer to ``question``: tokens, each expert call as a collapsible step, overlays."""
        question = (question or "").strip()
        if not question:
            yield (state, state.history, "", *self._viewer_outputs(state))
            return
        view_slice, on_screen = self._model_slice(state)
        any_change = False
        for history, changed in self.engine.stream(state, question, _user(request), view_slice, on_screen):
            if changed:
                state.view.slices.pop(state.view.plane, None)
                any_change = True
            state.history = history
            yield (state, history, "", *(self._viewer_outputs(state) if changed else (gr.skip(),) * 5))
        if any_change:  # the final value carries the viewer too (API clients see only the last one)
            yield (state, state.history, "", *self._viewer_outputs(state))

    @staticmethod
    def _model_slice(state: SessionState) -> tuple[int | None, bool]:
        """(axial slice the model is shown, on the volume's own third axis; whether it is on screen): the axial
        slice on screen, or while another plane is shown the last axial one (the middle at first)."""
        vol = state.volume
        if vol is None or vol.is_2d:
            return None, True
        axial = state.view.slices.get("axial")
        k = native_axial_index(vol, axial) if axial is not None else None
        return k, state.view.plane == "axial"

    # -- report -------------------------------------------------------------------------------------
    def draft_report(self, state: SessionState, progress=gr.Progress()) -> tuple:
        """(state, findings, impression, status) drafted from the series' expert results."""
        results = state.series_results()
        vol = state.volume
        modality = vol.modality if vol is not None else ""
        try:
            if self.engine.backend is not None:
                progress(0.2, desc="Drafting with the language model")
                findings, impression, flags = draft_with_model(self.engine.backend, results, modality)
                by = self.engine.backend.info.name
            else:
                findings, impression = draft_from_results(results, modality)
                flags, by = [], "expert results template"
        except ReportError as exc:
            return (state, gr.skip(), gr.skip(), str(exc))
        state.report = {"findings": findings, "impression": impression, "drafted_by": by, "flags": "\n".join(flags)}
        status = f"Draft by {by} from {len(results)} expert result(s). Edit it, then export."
        if flags:
            status += " Check: " + "; ".join(flags)
        return (state, findings, impression, status)

    def make_report(self, findings: str, impression: str, state: SessionState, request: gr.Request) -> Report | None:
        """The edited report of the series on screen with its expert results, or ``None`` without a series or findings."""
        if state.series is None or not (findings or "").strip():
            return None
        return Report(findings=findings, impression=impression or "", study_uid=state.study.uid,
                      series_uid=state.series.uid, series_description=state.series.description,
                      modality=state.series.modality, results=[r.to_json() for r in state.series_results()],
                      drafted_by=state.report.get("drafted_by", "clinician"), author=_user(request),
                      flags=[f for f in state.report.get("flags", "").split("\n") if f])

    def export_report(self, findings: str, impression: str, state: SessionState, request: gr.Request) -> tuple:
        """(state, files, status): Markdown, PDF, DICOM SR and one DICOM SEG per mask, in the session folder."""
        from app.report import write_seg, write_sr

        report = self.make_report(findings, impression, state, request)
        if report is None:
            return (state, None, "Draft (or write) a report first.")
        results = state.series_results()
        folder = state.workdir / f"report-{int(time.time() * 1000)}"
        folder.mkdir(parents=True)
        images = [r.render_overlay(state.series.volume) for r in results
                  if r.overlay_renderer and (r.label_volume is None or r.label_volume.shape == state.series.volume.shape)]
        files = [write_markdown(report, folder / "report.md"), write_pdf(report, folder / "report.pdf", images)]
        notes = []
        try:
            segs = write_seg(results, state.series.volume, folder)
            files += [write_sr(report, folder / "report_sr.dcm", state.series.volume, segs), *segs]
        except ReportError as exc:
            notes.append(str(exc))
        self.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid=state.study.uid,
                                     series_uid=state.series.uid, question="[export report]", answer=impression or "",
                                     model=report.drafted_by, expert_versions=report.expert_versions, event="report_export"))
        status = f"Exported {len(files)} file(s): " + ", ".join(p.name for p in files) + ("; " + " ".join(notes) if notes else "")
        return (state, [str(p) for p in files], status)


def _as_list(files: Any) -> list[Any]:
    if files is None:
        return []
    return list(files) if isinstance(files, (list, tuple)) else [files]


def _picture_file(state: SessionState, image: np.ndarray, keep: int = 4) -> str:
    """``image`` as a lossless PNG in the session's folder (the last ``keep`` are kept). Gradio copies a
    file into its cache atomically; handing it an array instead makes it rewrite a shared cache file in
    place, which a concurrent session showing the same picture can read half-written."""
    from PIL import Image

    state.picture_count += 1
    path = state.workdir / f"view-{state.picture_count:06d}.png"
    Image.fromarray(image).save(path, format="PNG", compress_level=1)
    stale = state.workdir / f"view-{state.picture_count - keep:06d}.png"
    stale.unlink(missing_ok=True)
    return str(path)


def _user(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "local") if request is not None else "local"


def _result_label(key: tuple[str, str, str] | None) -> str:
    if key is None:
        return ""
    args = "" if key[2] in ("{}", "") else f" {key[2]}"
    return f"{key[1]}{args}"


def _busiest_slice(vol: Any, result: Any, plane: str) -> int | None:
    """The slice (in ``plane``) showing the most mask voxels, so an overlay opens where it is."""
    from app.viewer import plane_mask_counts

    counts = plane_mask_counts(vol, result.label_volume.array, plane)
    return int(np.argmax(counts)) if counts.any() else None
