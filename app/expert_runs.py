"""Running an expert from the page: whether it reads the study on screen (said in a clinician's words),
a progress bar that advances while it runs, and what each browser session is still waiting for.

``RunningJobs`` lets "Draft report" wait for the session's expert runs and chat answer instead of
drafting from results that are not there yet. ``run_with_progress`` runs an expert in a worker thread and
reports elapsed time and an estimate from the expert's last run to Gradio's progress bar.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from data.study import Study, Volume
from experts.base import Expert, ExpertResult

__all__ = ["RunningJobs", "run_with_progress", "not_applicable", "study_words", "PROGRESS_EVERY_S"]

PROGRESS_EVERY_S = 0.5  # how often a running expert's progress bar is updated
UNKNOWN_RUN_S = 10.0  # half-way point of the progress bar of an expert not yet timed in this process

_MODALITY_WORDS = {"CT": "CT", "MR": "MRI", "DX": "X-ray", "CR": "X-ray", "MG": "mammography", "PT": "PET",
                   "NM": "nuclear medicine", "US": "ultrasound", "XA": "angiography"}
_IMAGE_MODALITIES = {"DX", "CR", "MG"}  # single pictures, not series of slices
_BODY_PART_WORDS = {"ABDOMEN": "abdominal", "CHEST": "chest", "BRAIN": "brain", "HEAD": "head", "PELVIS": "pelvic",
                    "NECK": "neck", "SPINE": "spine", "KNEE": "knee"}


class RunningJobs:
    """What each session is running (expert titles, "the answer in the chat"), so another event can wait for it."""

    def __init__(self) -> None:
        self._jobs: dict[str, list[str]] = {}  # session id → what runs
        self._changed = threading.Condition()

    @contextmanager
    def running(self, session: str, what: str) -> Iterator[None]:
        """Mark ``what`` as running for ``session`` inside the ``with`` block."""
        with self._changed:
            self._jobs.setdefault(session, []).append(what)
        try:
            yield
        finally:
            with self._changed:
                jobs = self._jobs.get(session, [])
                if what in jobs:
                    jobs.remove(what)
                if not jobs:
                    self._jobs.pop(session, None)
                self._changed.notify_all()

    def now(self, session: str) -> list[str]:
        """What ``session`` is running now."""
        with self._changed:
            return list(self._jobs.get(session, []))

    def wait(self, session: str, timeout_s: float,
             on_wait: Callable[[list[str], float], None] = lambda jobs, waited_s: None) -> list[str]:
        """Wait until ``session`` runs nothing (``[]``), or ``timeout_s`` seconds: then what still runs.
        ``on_wait(jobs, seconds waited)`` is called about every ``PROGRESS_EVERY_S`` while waiting (a progress message)."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            with self._changed:
                jobs = list(self._jobs.get(session, []))
            left = deadline - time.monotonic()
            if not jobs or left <= 0:
                return jobs
            on_wait(jobs, time.monotonic() - started)
            with self._changed:
                if self._jobs.get(session):
                    self._changed.wait(min(left, PROGRESS_EVERY_S))


def run_with_progress(registry: Any, name: str, title: str, inputs: Volume | dict[str, Volume], progress: Callable[..., Any],
                      expected_s: float | None = None) -> ExpertResult:
    """``registry.run(name, inputs)`` in a worker thread while ``progress`` (a ``gr.Progress``) shows the seconds
    elapsed and a bar that advances: elapsed over ``expected_s`` (the expert's last run), or, for an expert not
    timed yet, a bar that slows as it nears the end (half-way at ``UNKNOWN_RUN_S``). Raises what the expert raised."""
    progress(0.02, desc=f"{title}: starting")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3-expert") as pool:
        job = pool.submit(registry.run, name, inputs)
        t0 = time.perf_counter()
        while True:
            try:
                return job.result(timeout=PROGRESS_EVERY_S)
            except TimeoutError:
                elapsed = time.perf_counter() - t0
                if expected_s:
                    fraction = min(elapsed / expected_s, 0.99)
                    desc = f"{title}: {elapsed:.0f} s of about {expected_s:.0f} s"
                else:
                    fraction = elapsed / (elapsed + UNKNOWN_RUN_S)
                    desc = f"{title}: running for {elapsed:.0f} s"
                progress(0.02 + 0.96 * fraction, desc=desc)


def not_applicable(expert: Expert, title: str, study: Study) -> str | None:
    """Why ``expert`` (shown as ``title``) does not read ``study``, in a clinician's words ("The CT segmentation
    expert reads CT series; this study is a brain MRI."), or ``None`` when the study has a series it reads."""
    if not expert.modalities or any(s.volume.modality in expert.modalities for s in study.series):
        return None
    reads = _modality_words(expert.modalities)
    if expert.sequences:
        reads += f" ({', '.join(expert.sequences)} together)"
    name = title[0].lower() + title[1:] if title[1:2].islower() else title
    return f"The {name} expert reads {reads}; this study is {study_words(study)}."


def study_words(study: Study) -> str:
    """A study as a clinician names it: "a brain MRI", "an abdominal CT", "a chest X-ray"."""
    modalities = list(dict.fromkeys(s.volume.modality for s in study.series))
    if len(modalities) != 1:
        return "a study of " + " and ".join(_MODALITY_WORDS.get(m, m) for m in modalities) + " series"
    parts = list(dict.fromkeys(s.volume.body_part.upper() for s in study.series if s.volume.body_part))
    where = _BODY_PART_WORDS.get(parts[0], parts[0].lower()) if len(parts) == 1 else ""
    phrase = " ".join(w for w in (where, _MODALITY_WORDS.get(modalities[0], modalities[0])) if w)
    return f"{_article(phrase)} {phrase}"


def _modality_words(modalities: tuple[str, ...]) -> str:
    words = " or ".join(dict.fromkeys(_MODALITY_WORDS.get(m, m) for m in modalities))
    return f"{words} {'images' if set(modalities) <= _IMAGE_MODALITIES else 'series'}"


def _article(phrase: str) -> str:
    """ "a" or "an" before ``phrase``, by sound: "an MRI", "an X-ray", "an abdominal CT", "a CT"."""
    first = phrase.split()[0]
    spelled = first[:2].isupper() or first[1:2] == "-"  # an acronym, or X-ray: read letter by letter
    return "an" if first[0].lower() in "aeiou" or (spelled and first[0] in "AEFHILMNORSX") else "a"
