"""The page's PACS section (shown only when ``[pacs] url`` is set): search the hospital's PACS, pull a study
through the same ingest and de-identification path as an upload, send the report (DICOM SR) and the
masks (DICOM SEG) back to the original study when the administrator enabled write-back.

    panel = PacsPanel(config.pacs, events)
    ui = PacsComponents()
    panel.search_layout(ui)      # inside the study column
    panel.send_layout(ui)        # inside the report section
    panel.wire(ui, state, study_out, findings, impression)

The search results are the PACS's own listing (names, patient IDs, accession numbers): they go to the
logged-in clinician who searched and stay in that browser session's memory only. No log line and no
audit record carries them: the audit trail records that a search ran (which filters, how many hits),
then the loaded study and any write-back by the de-identified Study Instance UID.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydicom.valuerep import PersonName

from app.audit import AuditRecord
from app.config import PacsConfig
from app.events import AppEvents
from app.pacs import PacsClient, PacsError, StudySummary
from app.report import ReportError, write_seg, write_sr
from app.session import SessionState
from data.errors import IngestError

__all__ = ["PacsPanel", "PacsComponents", "RESULT_HEADERS", "MODALITIES", "WRITEBACK_OFF_MESSAGE"]

RESULT_HEADERS = ["#", "patient", "patient ID", "date", "accession", "modality", "description", "series"]
MODALITIES = ["CT", "MR", "CR", "DX", "US", "PT", "NM", "MG", "XA"]
WRITEBACK_OFF_MESSAGE = (
    "Sending results to the PACS is turned off on this server, so nothing was sent. Use Export to download the "
    "DICOM SR and SEG files; an administrator can turn write-back on ([pacs] writeback_enabled)."
)
_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})(?:[ T].*)?$")  # YYYY-MM-DD or YYYYMMDD, a time part ignored


@dataclass
class PacsComponents:
    """The section's Gradio components, filled by ``search_layout`` / ``send_layout``."""

    patient_id: Any = None
    accession: Any = None
    date_from: Any = None
    date_to: Any = None
    modality: Any = None
    search: Any = None
    status: Any = None
    results: Any = None
    choice: Any = None
    load: Any = None
    send: Any = None
    retry: Any = None
    send_status: Any = None


class PacsPanel:
    """The PACS section's event functions over one configured PACS (a fresh ``PacsClient`` per call, so
    concurrent sessions never share an HTTP session)."""

    def __init__(self, config: PacsConfig, events: AppEvents, max_results: int = 100) -> None:
        if not config.enabled:
            raise PacsError("the PACS panel needs [pacs] url (or $M3_PACS_URL), or [pacs] host with protocol = \"dimse\"; "
                            "without them the page shows no PACS section.")
        self.config = config
        self.events = events
        self.max_results = max_results

    # -- layout -------------------------------------------------------------------------------------
    def search_layout(self, ui: PacsComponents) -> None:
        """Search fields, results table, study picker and Load button (an accordion in the study column)."""
        with gr.Accordion("PACS", open=False, elem_id="m3-pacs"):
            with gr.Row():
                ui.patient_id = gr.Textbox(label="Patient ID", elem_id="m3-pacs-patient")
                ui.accession = gr.Textbox(label="Accession number", elem_id="m3-pacs-accession")
            with gr.Row():
                ui.date_from = gr.DateTime(label="Study date from", include_time=False, type="string", elem_id="m3-pacs-from")
                ui.date_to = gr.DateTime(label="to (empty: same day)", include_time=False, type="string", elem_id="m3-pacs-to")
                ui.modality = gr.Dropdown(["", *MODALITIES], value="", label="Modality", allow_custom_value=True, elem_id="m3-pacs-modality")
            ui.search = gr.Button("Search the PACS", size="sm", elem_id="m3-pacs-search")
            ui.status = gr.Markdown(elem_id="m3-pacs-status")
            ui.results = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, wrap=True, max_height=240, elem_id="m3-pacs-results")
            with gr.Row():
                ui.choice = gr.Dropdown(label="Study", choices=[], scale=4, elem_id="m3-pacs-choice")
                ui.load = gr.Button("Load", variant="primary", size="sm", scale=1, elem_id="m3-pacs-load")

    def send_layout(self, ui: PacsComponents) -> None:
        """"Send results to PACS" (disabled unless write-back is on) and the outbox retry button."""
        with gr.Row():
            ui.send = gr.Button("Send results to PACS", interactive=self.config.writeback_enabled, elem_id="m3-pacs-send")
            ui.retry = gr.Button(**self._retry_button(), size="sm", elem_id="m3-pacs-retry")
        ui.send_status = gr.Markdown("" if self.config.writeback_enabled else "Write-back to the PACS is turned off by the administrator.",
                                     elem_id="m3-pacs-send-status")

    def wire(self, ui: PacsComponents, state: Any, study_out: list[Any], findings: Any, impression: Any,
             after_study: dict[str, Any] | None = None) -> None:
        """Connect the buttons; ``study_out`` are the study panel's outputs (as an upload fills them); ``after_study``
        the event an opened study is followed by (the previous study's draft report is emptied, as after an upload)."""
        fields = [ui.patient_id, ui.accession, ui.date_from, ui.date_to, ui.modality, state]
        found = [state, ui.results, ui.choice, ui.status]
        ui.search.click(self.search, fields, found, api_name="pacs_search")
        for box in (ui.patient_id, ui.accession):
            box.submit(self.search, fields, found, api_name=False)
        ui.results.select(self.pick_row, None, ui.choice, api_name=False)
        loaded = ui.load.click(self.load, [ui.choice, state], [*study_out, ui.status], api_name="pacs_load",
                               concurrency_limit=4, concurrency_id="ingest")
        if after_study:
            loaded.then(**after_study)
        ui.send.click(self.send, [findings, impression, state], [state, ui.send_status, ui.retry], api_name="pacs_send")
        ui.retry.click(self.retry, [state], [state, ui.send_status, ui.retry], api_name="pacs_retry")

    # -- events -------------------------------------------------------------------------------------
    def search(self, patient_id: str | None, accession: str | None, date_from: str | None, date_to: str | None,
               modality: str | None, state: SessionState, request: gr.Request) -> tuple:
        """(state, results table, study picker, status): a study search (QIDO-RS or C-FIND) with every filter
        given (at most ``max_results`` studies), newest first."""
        filters = {"patient ID": (patient_id or "").strip(), "accession": (accession or "").strip(),
                   "modality": (modality or "").strip().upper()}
        try:
            dates = _date_range(date_from, date_to)
            hits = self._client().search(patient_id=filters["patient ID"] or None, accession=filters["accession"] or None,
                                         date=dates, modality=filters["modality"] or None, limit=self.max_results + 1)
        except PacsError as exc:
            return (state, gr.skip(), gr.skip(), f"**PACS search failed.** {_sentence(exc)}")
        hits.sort(key=lambda h: h.study_date, reverse=True)
        more = len(hits) > self.max_results
        state.pacs_hits = hits[: self.max_results]
        used = [name for name, value in filters.items() if value] + (["study date"] if dates else [])
        self.events.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid="", series_uid="",
                                            question=f"[pacs search] by {', '.join(used)}", answer=f"{len(state.pacs_hits)} studies",
                                            model="", event="pacs_search"))
        rows = [_row(i, h) for i, h in enumerate(state.pacs_hits, start=1)]
        choices = [(f"{r[0]}. {r[3]} {r[5]} {r[6]} ({r[4]})".replace("  ", " "), i) for i, r in enumerate(rows)]
        if not rows:
            status = "No study on the PACS matches these filters."
        else:
            status = f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} found; pick one and press Load."
            if more:
                status += f" More than {self.max_results} studies match and only {self.max_results} are shown: narrow the search."
        return (state, rows, gr.update(choices=choices, value=0 if choices else None), status)

    def pick_row(self, evt: gr.SelectData) -> Any:
        """A click on a results row picks that study."""
        return gr.update(value=int(evt.index[0]))

    def load(self, choice: int | None, state: SessionState, request: gr.Request, progress=gr.Progress()) -> tuple:
        """Retrieve the picked study (WADO-RS or C-MOVE), ingest and de-identify it like an upload (the original files
        are deleted), show its series. Outputs: the study panel's, then the PACS status."""
        hits: list[StudySummary] = state.pacs_hits
        if choice is None or not hits or not 0 <= int(choice) < len(hits):
            message = "Search the PACS and pick a study first."
            return (*self.events.study_outputs(state, message), message)
        progress(0.1, desc="Retrieving the study from the PACS")
        started = time.perf_counter()
        try:
            study = self._client().load(hits[int(choice)].study_uid)
        except (PacsError, IngestError) as exc:
            message = f"**Could not load the study from the PACS.** {_sentence(exc)}"
            return (*self.events.study_outputs(state, message), message)
        progress(0.9, desc="Preparing the viewer")
        out = self.events.show_study(study, state, request, started, event="pacs_load", source="the PACS study")
        if state.study is not study:  # no image series: show_study said why
            return (*out, out[3])
        state.pacs_study = study.uid
        return (*out, f"Study {int(choice) + 1} loaded from the PACS and de-identified.")

    def send(self, findings: str, impression: str, state: SessionState, request: gr.Request, progress=gr.Progress()) -> tuple:
        """(state, status, retry button): the report as DICOM SR and every mask as DICOM SEG, re-identified
        to the original study by ``PacsClient.store`` (which keeps them in the outbox until the PACS has them)."""
        if not self.config.writeback_enabled:
            return (state, WRITEBACK_OFF_MESSAGE, gr.update(**self._retry_button()))
        report = self.events.make_report(findings, impression, state, request)
        if report is None:
            return (state, "Draft (or write) a report first.", gr.update(**self._retry_button()))
        if not state.pacs_study or state.study.uid != state.pacs_study:
            return (state, "Results go back only to a study loaded from the PACS; this one was uploaded. Use Export to "
                           "download the DICOM SR and SEG files instead.", gr.update(**self._retry_button()))
        progress(0.2, desc="Writing the DICOM SR and SEG")
        folder = state.workdir / f"pacs-send-{int(time.time() * 1000)}"
        folder.mkdir(parents=True)
        try:
            segs = write_seg(state.series_results(), state.series.volume, folder)
            sr = write_sr(report, folder / "report_sr.dcm", state.series.volume, segs)
            progress(0.6, desc="Sending to the PACS")
            self._client().store([_read(p) for p in (sr, *segs)])
            sent, status = True, (f"Sent to the PACS: the report (DICOM SR) and {len(segs)} mask(s) (DICOM SEG) are now in "
                                  "the original study.")
        except (ReportError, PacsError) as exc:
            sent, status = False, f"**Not sent.** {_sentence(exc)}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # de-identified copies; a pending batch lives in the outbox
        self.events.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid=state.study.uid,
                                            series_uid=state.series.uid, question="[pacs send] report SR + masks SEG",
                                            answer="sent" if sent else "not sent: " + status, model=report.drafted_by,
                                            expert_versions=report.expert_versions, event="pacs_send"))
        return (state, status, gr.update(**self._retry_button()))

    def retry(self, state: SessionState, request: gr.Request) -> tuple:
        """(state, status, retry button): send every batch waiting in the server's outbox again."""
        client = self._client()
        if not client.pending_batches():
            return (state, "Nothing is waiting in the outbox.", gr.update(**self._retry_button()))
        outcome = client.retry_outbox()
        status = f"Sent {outcome.sent} waiting batch(es) to the PACS."
        if outcome.pending:
            status += f" {outcome.pending} still waiting: {_sentence(outcome.errors[0])}"
        if outcome.expired:
            status += (f" {outcome.expired} batch(es) older than {self.config.outbox_max_age_days:g} days were not sent "
                       "(expired); an administrator drops them with `m3 pacs outbox drop --expired`.")
        self.events.audit.write(AuditRecord(user=_user(request), session=state.id, study_uid="", series_uid="",
                                            question="[pacs retry outbox]", answer=f"{outcome.sent} sent, {outcome.pending} waiting",
                                            model="", event="pacs_send"))
        return (state, status, gr.update(**self._retry_button()))

    # -- private ------------------------------------------------------------------------------------
    def _client(self) -> PacsClient:
        return PacsClient(self.config)

    def _retry_button(self) -> dict[str, Any]:
        waiting = len(self._client().pending_batches())
        return {"value": f"Retry sending ({waiting} waiting)", "visible": waiting > 0}


def _row(number: int, hit: StudySummary) -> list[Any]:
    date = hit.study_date
    shown = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else date
    name = PersonName(hit.patient_name).family_comma_given() if hit.patient_name else ""
    return [number, name, hit.patient_id, shown, hit.accession, "/".join(hit.modalities), hit.description,
            hit.n_series if hit.n_series is not None else ""]


def _date_range(start: str | None, end: str | None) -> tuple[str, str] | None:
    """``(from, to)`` as YYYYMMDD for the search's date filter; an empty ``end`` means the same day as ``start``."""
    first, last = _day(start), _day(end)
    if not first and not last:
        return None
    return (first, last or first) if first else ("", last)


def _day(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        return ""
    match = _DAY.match(text)
    if not match:
        raise PacsError("study dates must be YYYY-MM-DD (for example 2024-01-31); fix the date fields and search again.")
    return "".join(match.groups())


def _read(path: Any) -> Any:
    import pydicom

    return pydicom.dcmread(str(path))


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return text[:1].upper() + text[1:]


def _user(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "local") if request is not None else "local"
