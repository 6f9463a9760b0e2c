"""What the page's controls do: load a study, pick a series, move through it, run an expert, ask, draft
and export a report. Each method is one Gradio event; ``app.server`` wires them to components.

Every method takes the browser session's ``SessionState`` and returns it with the components' new
values, so nothing is shared between sessions except the loaded models.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np

from app.audit import AuditLog, AuditRecord
from app.chat import ChatEngine, arguments_text, expert_inputs, expert_title, plain_words, result_message
from app.expert_runs import UNKNOWN_RUN_S, RunningJobs, not_applicable, run_with_progress
from app.report import Report, ReportError, draft_from_results, draft_with_model, write_markdown, write_pdf
from app.session import SessionState
from app.viewer import PLANES, default_window, failure_html, legend_html, preset_window, render_view, window_presets
from app.webviewer import apply_client_view, burned_in_note, viewer_payload
from data.display import native_axial_index
from data.errors import IngestError
from experts.base import ExpertError

__all__ = ["UploadLimits", "AppEvents", "EXAMPLES", "SERIES_COLUMNS"]

log = logging.getLogger(__name__)

# example buttons: label → phantom kind for data.phantoms.generate
EXAMPLES: dict[str, str] = {"Example CT": "ct", "Example brain MRI": "mri", "Example chest X-ray": "cxr"}
EXAMPLE_SEED = 7
SERIES_COLUMNS = ["#", "Modality", "Description", "Voxels", "Spacing (mm)"]  # the series table
DRAFT_WAIT_S = 600.0  # longest "Draft report" waits for the session's expert runs and chat answer
CHAT_ANSWER = "the answer in the chat"  # what Draft report says it waits for while a question is answered


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
        self.jobs = RunningJobs()  # per session: expert runs and chat answers in progress
        self._failures: weakref.WeakKeyDictionary[SessionState, str] = weakref.WeakKeyDictionary()  # legend note
        self._last_run_s: dict[str, float] = {}  # expert name → seconds of its last run (the progress estimate)
        self._panel_study: weakref.WeakKeyDictionary[SessionState, str] = weakref.WeakKeyDictionary()  # study the panel is for
        self._said_no_results: weakref.WeakKeyDictionary[SessionState, bool] = weakref.WeakKeyDictionary()  # by Draft

    def expert_titles(self, names: list[str]) -> list[str]:
        """The button labels of experts ``names``: their titles (``Expert.title``), else their names."""
        return [expert_title(self.engine.registry, n) for n in names]

    def expert_name(self, label: str) -> str:
        """The registry name of the expert a button labelled ``label`` (its title or its name) runs."""
        registry = self.engine.registry
        if label in registry:
            return label
        return next((n for n in registry.names() if expert_title(registry, n) == label), label)

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
        from data.phantoms import generate, study_files, write_study

        kind = EXAMPLES[label]
        progress(0.05, desc=f"Generating the {label.lower()}")
        folder = state.workdir / f"example-{kind}-{int(time.time() * 1000)}"
        folder.mkdir(parents=True)
        study_dir = write_study(generate(kind, seed=EXAMPLE_SEED), folder)
        paths = study_files(study_dir)  # images only, not the truth files: what an upload of it holds
        return self._ingest(paths, state, request, progress)

    def _ingest(self, paths: list[Path], state: SessionState, request: gr.Request, progress: Any) -> tuple:
        from data import load_studies

        t0 = time.perf_counter()
        try:
            studies = load_studies([str(p) for p in paths], progress=True)
        except IngestError as exc:
            return self.study_outputs(state, f"Could not load the upload: {exc}")
        if len(studies) > 1:
            return self.study_outputs(state, f"The upload holds {len(studies)} different studies (patients or visits); "
                                             "upload one study at a time.")
        progress(0.9, desc="Preparing the viewer")
        return self.show_study(studies[0], state, request, t0)

    def show_study(self, study: Any, state: SessionState, request: gr.Request, started: float, *, event: str = "ingest",
                   source: str = "the upload") -> tuple:
        """Open an ingested, de-identified ``study`` (an upload, an example, a PACS study) in the session:
        audit it by its de-identified UID and return the study panel's outputs (series list first).
        ``started``: ``time.perf_counter()`` when loading began; ``event``: the audit event name."""
        if not study.series:
            problems = [str(e) for e in study.errors[:3]] + [f"{s.name}: {s.reason}" for s in study.skipped[:3]]
            return self.study_outputs(state, f"No image series in {source} ({'; '.join(problems) or 'no image data found'}).")
        state.user = _user(request)
        state.set_study(study)
        self._failures.pop(state, None)
        self.audit.write(AuditRecord(user=state.user, session=state.id, study_uid=study.uid, series_uid="",
                                     question="", answer=f"{len(study.series)} series", model="", event=event,
                                     seconds=time.perf_counter() - started))
        notes = [f"Loaded {len(study.series)} series (de-identified) in {time.perf_counter() - started:.1f} s."]
        if study.skipped:
            notes.append(f"{len(study.skipped)} object(s) skipped: " + "; ".join(f"{s.name} ({s.reason})" for s in study.skipped[:3]))
        if study.errors:
            notes.append(f"{len(study.errors)} file(s) could not be read: " + "; ".join(str(e) for e in study.errors[:3]))
        warned = [(i, w) for i, series in enumerate(study.series, 1) for w in series.warnings]
        if warned:  # geometry repaired, header elements dropped: what is shown may differ from the acquisition
            notes.append("Check: " + "; ".join(f"series {i}: {w}" for i, w in warned[:3])
                         + (f" (and {len(warned) - 3} more)" if len(warned) > 3 else ""))
        return self.study_outputs(state, " ".join(notes))

    def after_study(self, state: SessionState) -> tuple:
        """Once a study was opened (upload, example): (upload box, findings, impression, report status, downloads,
        expert status line). The upload box is emptied, so the next upload replaces this one; the report and the
        status lines are emptied when the session now shows another study than before (a draft never outlives
        its study), and left as they are when it does not (a refused upload)."""
        uid = state.study.uid if state.study is not None else ""
        if self._panel_study.get(state) == uid:
            return (None, *(gr.skip(),) * 5)
        self._panel_study[state] = uid
        return (None, "", "", "", None, "")

    def select_series(self, index: int | None, state: SessionState) -> tuple:
        if state.study is not None and index is not None and int(index) != state.series_index:
            state.select_series(int(index))
            self._failures.pop(state, None)
        return (state, *self._viewer_outputs(state), state.history, *self._window_outputs(state))

    def study_outputs(self, state: SessionState, message: str) -> tuple:
        """(state, series table (``SERIES_COLUMNS``), series dropdown, status ``message``, viewer × 6, chat, window × 3)."""
        rows = [s.summary_row() for s in state.study.series] if state.study else []
        table = [[i + 1, r["modality"], r["description"], r["shape"], r["spacing_mm"]] for i, r in enumerate(rows)]
        choices = [(f"{i + 1}. {r['description'] or r['modality']} · {r['modality']} · {r['shape']}", i)
                   for i, r in enumerate(rows)]
        dropdown = gr.update(choices=choices, value=state.series_index if choices else None)
        return (state, table, dropdown, message, *self._viewer_outputs(state), state.history, *self._window_outputs(state))

    # -- viewer -------------------------------------------------------------------------------------
    def set_plane(self, plane: str, state: SessionState) -> tuple:
        state.view.plane = plane if plane in PLANES else "axial"
        return (state, *self._viewer_outputs(state))

    def set_slice(self, index: float, state: SessionState) -> tuple:
        """Show slice ``index`` (the slider counts from 1). The slider's own value is not sent back: a reply that
        arrives after the user moved on must not pull the slider back to where it was."""
        state.view.slices[state.view.plane] = int(index) - 1
        image, caption, legend, _, overlay, payload = self._viewer_outputs(state)
        return (state, image, caption, legend, gr.skip(), overlay, payload)

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
        keys = {self._result_label(k): k for k in state.results}
        state.active_result = keys.get(shown) if shown else None
        return (state, *self._viewer_outputs(state))

    def _viewer_outputs(self, state: SessionState) -> tuple:
        """(image, caption, legend, slice slider, overlay dropdown, browser viewer payload (``app.webviewer``))."""
        vol = state.volume
        if vol is None:
            empty = gr.update(minimum=1, maximum=2, value=1, interactive=False)
            return (None, "No study loaded.", "", empty, gr.update(choices=[], value=None), "")
        plane = state.view.plane if not vol.is_2d else "axial"
        result = state.shown_result
        index = state.view.slices.get(plane)
        if index is None and result is not None and result.label_volume is not None and result.label_volume.shape == vol.shape:
            index = _busiest_slice(vol, result, plane)
        title = expert_title(self.engine.registry, result.expert) if result is not None else ""
        view = render_view(vol, plane, index, state.view.window, result, state.view.opacity, title)
        state.view.slices[plane] = view.index
        # a 2D image has one slice: the slider stays (Gradio needs maximum > minimum) but is disabled
        slider = gr.update(minimum=1, maximum=max(view.count, 2), value=view.index + 1, step=1, interactive=view.count > 1)
        labels = [self._result_label(k) for k in state.series_keys() if state.results[k].label_volume is not None]
        overlay = gr.update(choices=labels, value=self._result_label(state.active_result) if state.active_result else None)
        legend = view.legend
        if result is None:  # no overlay: the legend lists the last findings of a classifier (no mask) on this series
            findings = [state.results[k] for k in state.series_keys() if state.results[k].label_volume is None]
            if findings:
                legend = legend_html(findings[-1], None, expert_title(self.engine.registry, findings[-1].expert))
        legend = self._failures.get(state, "") + legend
        payload = viewer_payload(state, lambda name: expert_title(self.engine.registry, name))
        return (_picture_file(state, view.image), view.caption, legend, slider, overlay, payload)

    def _result_label(self, key: tuple[str, str, str] | None) -> str:
        """An expert result as the overlay list names it: "CT segmentation · liver"."""
        if key is None:
            return ""
        asked = arguments_text(json.loads(key[2])) if key[2] not in ("", "{}") else ""
        return expert_title(self.engine.registry, key[1]) + (f" · {asked}" if asked else "")

    def _window_outputs(self, state: SessionState) -> tuple:
        """(preset dropdown, centre, width)."""
        vol = state.volume
        if vol is None:
            return (gr.update(choices=[], value=None), None, None)
        centre, width = state.view.window or default_window(vol)
        choices = window_presets(vol) + (["manual"] if state.view.preset == "manual" else [])
        return (gr.update(choices=choices, value=state.view.preset), centre, width)

    # -- experts and chat ---------------------------------------------------------------------------
    def run_expert(self, label: str, state: SessionState, request: gr.Request, progress=gr.Progress()) -> tuple:
        """Run the expert a button names (``label``: its title or name) on what it reads of the study on screen.

        Returns (state, chat, image, caption, legend, slice slider, overlay list, expert status line, report status).
        An expert that does not read this study says why in plain words; one that fails says so in the status
        line, the legend and the chat, and is logged (expert and error only) and audited as an ``expert_run``."""
        registry = self.engine.registry
        name = self.expert_name(label)
        title = expert_title(registry, name)
        if state.series is None:
            return (state, state.history, *self._viewer_outputs(state), "Load a study first: upload one or open an example.",
                    gr.skip())
        t0 = time.perf_counter()
        state.history = state.history + [{"role": "user", "content": f"Run {title} on this study."}]
        try:
            expert = registry.get(name)
        except ExpertError as exc:  # its weights are missing or refused
            return self._expert_failed(state, request, name, title, exc, time.perf_counter() - t0)
        reason = not_applicable(expert, title, state.study)
        if reason is None:
            try:
                inputs = expert_inputs(expert, state.study, state.series)
            except ExpertError as exc:  # e.g. a brain MRI without all four sequences
                reason = plain_words(str(exc), registry)
        if reason is not None:  # said in the chat as it is, not folded into a step
            state.history = state.history + [{"role": "assistant", "content": reason}]
            return (state, state.history, *self._viewer_outputs(state), reason, gr.skip())
        cached = state.cached_result(name, {}, inputs)
        shown = _slice_on_screen(state)
        with self.jobs.running(state.id, title):  # until the result is in the session: a Draft waits for it
            try:
                result = cached or run_with_progress(registry, name, title, inputs, progress, self._last_run_s.get(name))
            except Exception as exc:  # any failure of a model run is shown, logged and audited; the page stays up
                return self._expert_failed(state, request, name, title, exc, time.perf_counter() - t0)
            state.add_result(result, inputs)
        if cached is None:
            self._last_run_s[name] = result.seconds
        self._failures.pop(state, None)
        if _slice_on_screen(state) == shown:  # open where the mask is, unless the user scrolled meanwhile
            state.view.slices.pop(state.view.plane, None)
        state.history = state.history + [result_message(name, result.arguments, result, None, result.seconds, title)]
        self.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid=state.study.uid,
                                     series_uid=state.series.uid, question=f"[button] run {name}", answer=result.summary,
                                     model="", expert_versions={name: result.version}, event="expert_run",
                                     tool_calls=[{"name": name, "arguments": result.arguments, "result": result.to_json(),
                                                  "error": None, "seconds": round(result.seconds, 3)}],
                                     seconds=time.perf_counter() - t0))
        took = f"{result.seconds:.1f} s" if result.seconds >= 0.1 else "under 0.1 s"
        status = f"{title} finished in {took}." if cached is None else f"{title}: result already computed for this study."
        # the report's status line said there was nothing to draft from: it says now there is
        report = "Expert results are ready: press Draft report." if self._said_no_results.pop(state, False) else gr.skip()
        return (state, state.history, *self._viewer_outputs(state), status, report)

    def _expert_failed(self, state: SessionState, request: gr.Request, name: str, title: str, exc: BaseException,
                       seconds: float) -> tuple:
        """The outputs of ``run_expert`` for a failed run: status line, legend and chat say so; the server log gets
        the expert and the error (no study data, no file names); the audit log an ``expert_run`` with the error."""
        message = plain_words(str(exc), self.engine.registry) or f"an error ({type(exc).__name__}) with no message"
        log.error("expert %s failed: %s: %s", name, type(exc).__name__, exc)
        self._failures[state] = failure_html(title, message)
        state.history = state.history + [{"role": "assistant", "content": f"{title} failed: {message}"}]
        self.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid=state.study.uid,
                                     series_uid=state.series.uid, question=f"[button] run {name}", answer="", model="",
                                     event="expert_run", flags=["expert failed"], seconds=seconds,
                                     tool_calls=[{"name": name, "arguments": {}, "result": None,
                                                  "error": f"{type(exc).__name__}: {exc}", "seconds": round(seconds, 3)}]))
        return (state, state.history, *self._viewer_outputs(state), f"**{title} failed:** {message}", gr.skip())

    def ask_on_screen(self, question: str, state: SessionState, view: str | None = None, request: gr.Request = None) -> Iterator[tuple]:
        """``ask`` about the slice the browser viewer shows: ``view`` is its report (``app.webviewer.apply_client_view``),
        sent with the question, so scrolling in the browser costs no server call and "this slice" is the one on screen."""
        apply_client_view(state, view)
        yield from self.ask(question, state, request)

    def ask(self, question: str, state: SessionState, request: gr.Request) -> Iterator[tuple]:
        """Stream the answer to ``question``: tokens, each expert call as a collapsible step, overlays. An
        expert that fails on the model's call is named in the legend and the server log."""
        question = (question or "").strip()
        if not question:
            yield (state, state.history, "", *self._viewer_outputs(state))
            return
        view_slice, on_screen = self._model_slice(state)
        shown, any_change = _slice_on_screen(state), False
        before = _last_turn(state)
        with self.jobs.running(state.id, CHAT_ANSWER):
            for history, changed in self.engine.stream(state, question, _user(request), view_slice, on_screen):
                if changed:
                    if _slice_on_screen(state) == shown:  # open where the mask is, unless the user scrolled meanwhile
                        state.view.slices.pop(state.view.plane, None)
                    any_change = True
                state.history = history
                outputs = self._viewer_outputs(state) if changed else (gr.skip(),) * 6
                shown = _slice_on_screen(state)
                yield (state, history, "", *outputs)
        turn = _last_turn(state)
        failed = turn is not before and turn is not None and self._note_chat_failures(state, turn)
        if any_change or failed:  # the final value carries the viewer too (API clients see only the last one)
            yield (state, state.history, "", *self._viewer_outputs(state))

    def _note_chat_failures(self, state: SessionState, turn: Any) -> bool:
        """Log, and show in the legend, the expert calls of ``turn`` (a ``vlm.agent.AgentTurn``) that failed;
        whether there were any."""
        registry, failed = self.engine.registry, False
        for call in turn.tool_calls:
            if call.error and call.name in registry:
                log.warning("expert %s failed on a chat question: %s", call.name, call.error)
                self._failures[state] = failure_html(expert_title(registry, call.name), plain_words(call.error, registry) or "")
                failed = True
        return failed

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
    def wait_for_runs(self, state: SessionState, progress=gr.Progress()) -> Any:
        """Before a draft (the page chains it to "Draft report" so the wait holds no model slot): wait until this
        session's expert runs and chat answer have finished, saying what it waits for. The report status is
        left as it is; ``gr.Error`` when something still runs after ``DRAFT_WAIT_S``."""
        still = self._wait_for_runs(state, progress)
        if still:
            raise gr.Error(still)
        return gr.skip()

    def _wait_for_runs(self, state: SessionState, progress: Any) -> str:
        """"" once the session runs nothing, else what still runs after ``DRAFT_WAIT_S`` (as a message)."""
        still = self.jobs.wait(state.id, DRAFT_WAIT_S, lambda jobs, waited_s: progress(
            waited_s / (waited_s + UNKNOWN_RUN_S), desc=f"Waiting for {' and '.join(jobs)} to finish before drafting"))
        return f"{' and '.join(still)} is still running; press Draft report again when it has finished." if still else ""

    def draft_report(self, state: SessionState, progress=gr.Progress()) -> tuple:
        """(state, findings, impression, status) drafted from the series' expert results, once this session's
        expert runs and chat answer have finished (waiting up to ``DRAFT_WAIT_S``)."""
        still = self._wait_for_runs(state, progress)
        if still:
            return (state, gr.skip(), gr.skip(), still)
        results = state.series_results()
        if not results:
            self._said_no_results[state] = True
            return (state, gr.skip(), gr.skip(), "There are no expert results for this series yet. Run an expert (the buttons "
                                                 "under the chat) or ask a question, then press Draft report.")
        vol = state.volume
        modality = vol.modality if vol is not None else ""
        titles = {r.expert: expert_title(self.engine.registry, r.expert) for r in results}
        try:
            if self.engine.backend is not None:
                progress(0.2, desc="Drafting with the language model")
                findings, impression, flags = draft_with_model(self.engine.backend, results, modality, titles)
                by = self.engine.backend.info.name
            else:
                findings, impression = draft_from_results(results, modality, titles)
                flags, by = [], "expert results template"
        except ReportError as exc:
            return (state, gr.skip(), gr.skip(), str(exc))
        burned_in = burned_in_note(state.series)  # pixels de-identification did not clean: the report says so
        flags = [*flags, burned_in] if burned_in else flags
        state.report = {"findings": findings, "impression": impression, "drafted_by": by, "flags": "\n".join(flags)}
        status = f"Draft by {by} from {len(results)} expert result{'s' if len(results) > 1 else ''}. Edit it, then export."
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
                      flags=_with_burned_in_note([f for f in state.report.get("flags", "").split("\n") if f], state.series))

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
        formats = {".md": "Markdown", ".pdf": "PDF"}
        kinds = [formats.get(p.suffix, "DICOM SR") for p in files[:3]]
        masks = f" and {len(files) - 3} DICOM SEG mask{'s' if len(files) > 4 else ''}" if len(files) > 3 else ""
        status = f"Exported {len(files)} files: the report as {', '.join(kinds)}{masks}. Download them below."
        status += (" " + " ".join(notes)) if notes else ""
        return (state, [str(p) for p in files], status)


def _with_burned_in_note(flags: list[str], series: Any) -> list[str]:
    """``flags`` with the series' burned-in annotation warning (``app.webviewer.burned_in_note``) once, when it has one."""
    note = burned_in_note(series)
    return flags + [note] if note and note not in flags else flags


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


def _last_turn(state: SessionState) -> Any:
    """The last answered turn of the session's chat (``vlm.agent.AgentTurn``), or None."""
    conversation = getattr(state.chat, "conversation", None)
    return conversation.turns[-1] if conversation is not None and conversation.turns else None


def _slice_on_screen(state: SessionState) -> tuple[str, int | None]:
    """(plane, slice index) on screen: compared before and after a run, it tells whether the user scrolled."""
    return state.view.plane, state.view.slices.get(state.view.plane)


def _busiest_slice(vol: Any, result: Any, plane: str) -> int | None:
    """The slice (in ``plane``) showing the most mask voxels, so an overlay opens where it is."""
    from app.viewer import plane_mask_counts

    counts = plane_mask_counts(vol, result.label_volume.array, plane)
    return int(np.argmax(counts)) if counts.any() else None
