"""Per-browser-session state: one study, one conversation, the expert results and the report draft.

Gradio keeps one ``SessionState`` per browser tab (``gr.State(new_session, time_to_live=...,
delete_callback=close_session)``): nothing here is shared between sessions, and closing a tab (or the
time-to-live running out) deletes the session's temporary files. ``live_sessions()`` counts the sessions
alive in this process, for the health page and the load benchmark.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from data.study import Series, Study, Volume
from experts.base import ExpertResult

__all__ = ["SessionState", "ViewState", "new_session", "close_session", "live_sessions"]

ResultKey = tuple[str, str, str]  # ("+"-joined input series UIDs, expert name, arguments JSON)
_LIVE: "weakref.WeakSet[SessionState]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


@dataclass
class ViewState:
    """What the viewer shows: plane, slice per plane, window (centre, width), overlay opacity 0..1."""

    plane: str = "axial"  # axial | coronal | sagittal
    slices: dict[str, int] = field(default_factory=dict)
    window: tuple[float, float] | None = None  # None = the series' default
    preset: str = "default"
    opacity: float = 0.45
    show_overlay: bool = True


@dataclass(eq=False)  # identity equality: sessions live in a WeakSet
class SessionState:
    """Everything one browser session has. ``results`` are keyed ``(input series UIDs, expert, arguments)``
    so a question asked twice does not run the expert twice; ``active_result`` is the key shown in the
    viewer. ``history`` is the chat as Gradio ``messages`` dicts; ``chat`` the model's own record (``StudyChat``)."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    user: str = ""
    study: Study | None = None
    series_index: int = 0
    view: ViewState = field(default_factory=ViewState)
    results: dict[ResultKey, ExpertResult] = field(default_factory=dict)
    active_result: ResultKey | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    chat: Any = None  # vlm.study_chat.StudyChat, created with the first question on a series
    report: dict[str, str] = field(default_factory=dict)  # findings / impression (editable draft)
    created: float = field(default_factory=time.time)
    picture_count: int = 0  # viewer pictures written to the workdir
    pacs_hits: list[Any] = field(default_factory=list, repr=False)  # last PACS search (app.pacs.StudySummary, holds PHI)
    pacs_study: str = ""  # de-identified UID of the study pulled from the PACS (the only one results may go back to)
    _workdir: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __deepcopy__(self, memo: dict) -> "SessionState":
        # Gradio deep-copies a State's default value per session: give each a fresh, empty session.
        return SessionState()

    # -- study and series -------------------------------------------------------------------------
    def set_study(self, study: Study) -> None:
        """Replace the study: results, conversation, report and view are reset."""
        self.study = study
        self.series_index = 0
        self.view = ViewState()
        self.results.clear()
        self.active_result = None
        self.history = []
        self.chat = None
        self.report = {}
        self.pacs_study = ""

    def select_series(self, index: int) -> Series:
        """Show series ``index``; the conversation restarts (it talks about one series)."""
        if self.study is None or not self.study.series:
            raise LookupError("no study loaded; upload a study or open an example first.")
        if not 0 <= index < len(self.study.series):
            raise LookupError(f"series index must be 0..{len(self.study.series) - 1}, got {index}.")
        if index != self.series_index:
            self.series_index = index
            self.view = ViewState()
            self.chat = None
            self.history = []
            self.active_result = None
        return self.study.series[index]

    @property
    def series(self) -> Series | None:
        if self.study is None or not self.study.series:
            return None
        return self.study.series[min(self.series_index, len(self.study.series) - 1)]

    @property
    def volume(self) -> Volume | None:
        s = self.series
        return None if s is None else s.volume

    # -- expert results ---------------------------------------------------------------------------
    def add_result(self, result: ExpertResult, inputs: Volume | Mapping[str, Volume] | None = None, *, show: bool = True) -> ResultKey:
        """Keep ``result`` (computed from ``inputs``, default the series on screen); shows its mask in the
        viewer if ``show``."""
        key = self._key(result.expert, result.arguments, inputs)
        self.results[key] = result
        if show and result.label_volume is not None:
            self.active_result = key
        return key

    def cached_result(self, expert: str, arguments: Mapping[str, Any], inputs: Volume | Mapping[str, Volume] | None = None) -> ExpertResult | None:
        """The result of ``expert`` with ``arguments`` on ``inputs`` if this session already has it."""
        return self.results.get(self._key(expert, arguments, inputs))

    @property
    def shown_result(self) -> ExpertResult | None:
        return None if self.active_result is None else self.results.get(self.active_result)

    def series_keys(self) -> list[ResultKey]:
        """Keys of the results computed from the series on screen (alone or with other sequences)."""
        uid = _uid(self.volume) if self.volume is not None else None
        return [k for k in self.results if uid and uid in k[0].split("+")]

    def series_results(self) -> list[ExpertResult]:
        """Results computed from the series on screen, oldest first."""
        return [self.results[k] for k in self.series_keys()]

    def _key(self, expert: str, arguments: Mapping[str, Any], inputs: Volume | Mapping[str, Volume] | None) -> ResultKey:
        if inputs is None:
            uids = [_uid(self.volume)] if self.volume is not None else [""]
        elif isinstance(inputs, Volume):
            uids = [_uid(inputs)]
        else:
            uids = sorted(_uid(v) for v in inputs.values())
        return ("+".join(uids), expert, json.dumps(dict(arguments), sort_keys=True, default=str))

    # -- files ------------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """A private temporary folder (mode 0700) for this session's exports; removed by ``close``."""
        if self._workdir is None or not self._workdir.exists():
            self._workdir = Path(tempfile.mkdtemp(prefix=f"m3-session-{self.id}-"))
        return self._workdir

    def close(self) -> None:
        """Drop the study and results and delete the session's temporary files."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.study = None
        self.results.clear()
        self.chat = None
        self.history = []
        self.pacs_hits = []
        self.pacs_study = ""
        with _LIVE_LOCK:
            _LIVE.discard(self)


def _uid(volume: Volume) -> str:
    """A volume's de-identified series UID, or (a NIfTI without one) an id stable while it is loaded."""
    return volume.series_uid or f"volume-{id(volume)}"


def new_session() -> SessionState:
    """A fresh, empty session (the ``gr.State`` default)."""
    return SessionState()


def close_session(state: Any) -> None:
    """``gr.State`` delete callback."""
    if isinstance(state, SessionState):
        state.close()


def live_sessions() -> int:
    """Sessions alive in this process."""
    with _LIVE_LOCK:
        return len(_LIVE)
