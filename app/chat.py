"""The chat panel: runs the agent on a question and turns its events into Gradio chat messages.

Tokens stream into the assistant's bubble; each expert call becomes a collapsible step (Gradio's
"thought" messages: title = the expert's title and what it was asked for, body = findings, duration = seconds). Expert
results are kept in the session (the same call is not run twice on a series) and shown in the viewer.
Every finished answer is written to the audit log.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, Mapping


from app.audit import AuditLog, AuditRecord, tool_call_records
from app.session import SessionState
from data.study import Series, Study, Volume
from experts.base import ExpertResult
from vlm.conversation import study_volumes
from vlm.study_chat import StudyChat, TurnSettings

__all__ = ["ChatEngine", "SessionRegistry", "SlottedBackend", "expert_inputs", "series_name", "result_message", "expert_title", "plain_words",
           "arguments_text", "flag_text", "NO_MODEL_MESSAGE"]

NO_MODEL_MESSAGE = "No language model configured: experts and viewer only."
STREAM_INTERVAL_S = 0.05  # least time between two streamed updates of the answer


def expert_inputs(expert: Any, study: Study | None, series: Series) -> Volume | dict[str, Volume]:
    """What ``expert`` (an ``Expert``) is given when run from its button: the study's volumes it chooses
    (``Expert.select_inputs``: the series on screen, or every MR sequence for the brain-tumour expert)."""
    if study is None:
        return expert.select_inputs({"image": series.volume})
    volumes = study_volumes(study)
    return expert.select_inputs(volumes, series_name(study, series))


def series_name(study: Study, series: Series) -> str | None:
    """The name ``vlm.conversation.study_volumes`` gives ``series`` of ``study``."""
    names = list(study_volumes(study))
    index = next((i for i, s in enumerate(study.series) if s is series), None)
    return None if index is None or index >= len(names) else names[index]


class SlottedBackend:
    """A chat backend used by at most ``slots`` generations at a time (the language model's share of the machine);
    a chat turn holds a slot only while the model writes, not while its experts run, so a follow-up answered from a
    kept result does not wait behind other sessions' expert runs."""

    def __init__(self, backend: Any, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"language-model slots must be >= 1, got {slots}.")
        self.inner = backend
        self.info = backend.info
        self._slots = threading.BoundedSemaphore(slots)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream_chat(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        with self._slots:
            yield from self.inner.stream_chat(*args, **kwargs)


class SessionRegistry:
    """The expert registry seen by one session's agent: same experts, but results are kept in the session,
    so asking twice about a series runs an expert once. Results are never shared between sessions. At most
    ``slots`` (shared by all sessions) expert runs go at once."""

    def __init__(self, registry: Any, state: SessionState, slots: threading.BoundedSemaphore | None = None) -> None:
        self._registry = registry
        self._state = state
        self._slots = slots

    def __getattr__(self, name: str) -> Any:  # names(), get(), tool_schemas(), ... of the shared registry
        return getattr(self._registry, name)

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def run(self, name: str, volumes: Volume | Mapping[str, Volume], **arguments: Any) -> ExpertResult:
        cached = self._state.cached_result(name, arguments, volumes)
        if cached is not None:
            return cached
        if self._slots is None:
            result = self._registry.run(name, volumes, **arguments)
        else:
            with self._slots:
                result = self._registry.run(name, volumes, **arguments)
        self._state.add_result(result, volumes)
        return result


class ChatEngine:
    """Shared by all sessions: the chat backend (or None: chat disabled), the expert registry, the audit
    log. ``stream`` is the only per-session entry point."""

    def __init__(self, backend: Any, registry: Any, audit: AuditLog, *, max_rounds: int = 3, model_slots: int = 1,
                 expert_slots: int = 2, router: Any = None) -> None:
        self.backend = SlottedBackend(backend, model_slots) if backend is not None else None
        self.router = router  # vlm.routing.Router: ``backend`` answers first, the router's large model when needed
        self.registry = registry
        self.audit = audit
        self.max_rounds = max_rounds
        self.expert_slots = threading.BoundedSemaphore(expert_slots)  # experts a chat turn runs, all sessions together

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def stream(self, state: SessionState, question: str, user: str, view_slice: int | None = None,
               on_screen: bool = True) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        """Yield ``(chat history, overlay changed)`` as the answer to ``question`` streams in.

        view_slice: the axial slice the model is shown (index on the volume's own third axis; None: the one it
        holds, first the middle), through ``vlm.study_chat.StudyChat``, the path training, ``m3 ask`` and
        ``m3 eval`` share. on_screen: that axial slice is on screen, so "in this slice" questions are about it."""
        history = state.history + [{"role": "user", "content": question}]
        if not self.enabled:
            yield history + [_assistant(NO_MODEL_MESSAGE + " Use the expert buttons to measure.")], False
            return
        if state.series is None:
            yield history + [_assistant("Load a study first (upload one or open an example).")], False
            return
        if state.chat is None:
            state.chat = StudyChat(self.backend, SessionRegistry(self.registry, state, self.expert_slots), state.study,
                                   settings=TurnSettings(max_rounds=self.max_rounds), primary=series_name(state.study, state.series),
                                   router=self.router)
        state.chat.look_at(view_slice, on_screen=on_screen)
        answer = ""
        steps: dict[int, int] = {}  # id(tool_call) → index of its step message in history
        history = history + [_assistant("")]
        t0 = last_yield = time.perf_counter()
        for event in state.chat.stream(question):
            changed = False
            if event.kind == "token":
                answer += event.text
                history[-1] = _assistant(answer)
                if time.perf_counter() - last_yield < STREAM_INTERVAL_S:
                    continue  # coalesce tokens: the page gets at most ~20 updates a second
                last_yield = time.perf_counter()
            elif event.kind == "tool_call" and event.tool_call is not None:
                call = event.tool_call
                step = _step(call.name, call.arguments, "pending", expert_title(self.registry, call.name))
                history.insert(len(history) - 1, step)
                steps[id(call)] = len(history) - 2
            elif event.kind == "tool_result" and event.tool_call is not None:
                call = event.tool_call
                error, title = plain_words(call.error, self.registry), expert_title(self.registry, call.name)
                message = result_message(call.name, call.arguments, call.result, error, call.seconds, title)
                where = steps.get(id(call))
                if where is None:
                    history.insert(len(history) - 1, message)
                else:
                    history[where] = message
                changed = call.result is not None and call.result.label_volume is not None
            elif event.kind == "error":
                history[-1] = _assistant((answer + "\n\n" if answer else "") + f"Warning: {event.text}")
            elif event.kind == "done" and event.turn is not None:
                turn = event.turn
                answer = turn.answer or answer
                # a refusal, a header answer or an answer given by the expert's own fields is the answer, not a warning
                # (the audit log keeps every flag)
                shown = [f for f in turn.flags if not f.startswith(("refusal", "answered from the header", "answer composed from",
                                                                    "model text dropped"))]
                text = answer + ("\n\nCheck: " + "; ".join(flag_text(f) for f in shown) + "." if shown else "")
                if turn.routing is not None and turn.routing.line():  # which model answered (vlm.routing)
                    text += "\n\n" + turn.routing.line()
                history[-1] = _assistant(text)
                self._audit(state, user, question, turn, time.perf_counter() - t0)
            yield list(history), changed

    def _audit(self, state: SessionState, user: str, question: str, turn: Any, seconds: float) -> None:
        info = self.backend.info
        if turn.answered_by == "large":  # the model that wrote the answer is the large one
            info = self.router.large.info
        self.audit.write(
            AuditRecord(
                user=user,
                session=state.id,
                study_uid=state.study.uid if state.study else "",
                series_uid=state.series.uid if state.series else "",
                question=question,
                answer=turn.answer,
                model=info.name,
                model_version=info.version,
                expert_versions={c.result.expert: c.result.version for c in turn.tool_calls if c.result is not None},
                tool_calls=tool_call_records(turn.tool_calls),
                flags=list(turn.flags),
                seconds=seconds,
                routing=turn.routing.to_json() if turn.routing is not None else {},
            )
        )


def result_message(name: str, arguments: Mapping[str, Any], result: ExpertResult | None, error: str | None, seconds: float,
                   title: str = "") -> dict[str, Any]:
    """A finished expert step as a collapsed chat "thought" titled ``title`` (default ``name``) and what it was
    asked for ("CT segmentation · liver"): findings and measurements, or why it could not run."""
    if result is not None:
        lines = [f"- {m.text()}" for m in result.measurements]
        lines += [
            f"- {f.label}: {'yes' if f.present else 'no'}"
            + (f" (probability {f.probability:.2f})" if f.probability is not None else "")
            for f in result.findings
        ]
        body = (result.summary + "\n" if result.summary else "") + "\n".join(lines)
    else:
        body = f"Could not run: {error or 'the expert returned no result'}"
    message = _step(name, arguments, "done", title)
    message["content"] = body.strip() or "no findings"
    message["metadata"]["duration"] = round(float(seconds or 0.0), 2)
    return message


def expert_title(registry: Any, name: str) -> str:
    """What the clinician sees for expert ``name``: its ``title`` ("CT segmentation"), else the name itself
    (an expert the registry does not hold, or one without a title)."""
    from experts.base import ExpertError

    if name not in registry:
        return name
    try:
        return registry.get(name).title or name
    except ExpertError:  # could not load: the name is all there is
        return name


def plain_words(text: str | None, registry: Any) -> str | None:
    """``text`` (an expert's or the agent's message) with every expert's name replaced by its title."""
    if not text:
        return text
    for name in registry.names():
        if name in text:
            text = text.replace(name, expert_title(registry, name))
    return text


def flag_text(flag: str) -> str:
    """An agent flag (``vlm.agent``) in a clinician's words: what to check in the answer."""
    kind, _, detail = flag.partition(": ")
    if flag == "malformed reference" or detail == "malformed reference":
        return "part of the answer could not be filled in from the expert results"
    if kind == "unresolved reference":
        return f"no expert result gives the {detail} the answer refers to"
    if kind == "ungrounded number":
        return f"{detail} is not in any expert result"
    if kind == "backend error":
        return "the language model stopped with an error before finishing"
    if flag == "modality mismatch":
        return "the question is about another kind of scan than this one"
    if flag.startswith("tool round limit reached"):
        return "the assistant stopped after the most expert calls one question may make"
    if flag == "expert called for the question":
        return "the model answered without an expert; the expert the question needs was run and the answer rewritten from its result"
    if flag == "answer corrected to the expert result":
        return "the model's yes / no disagreed with the expert result and was corrected to it"
    if flag == "expert uncertain":
        return "the expert marked its result uncertain; read the reasons in the answer"
    if flag == "answer composed from the expert result":
        return "the model's wording did not state the expert result, so the answer gives the result's fields"
    if kind == "model text dropped":
        return "sentences of the model's answer that no expert result supports (or that were cut off) were left out"
    if flag == "answer trimmed to the question":
        return "text the model wrote after the answer was dropped"
    if kind == "constraint failed":
        return ("a check that keeps the answer on the expert's fields failed while the model wrote, so part of the answer "
                "was written unchecked; compare it with the expert result")
    if flag == "constraints not applied (remote model)":
        return ("the remote language model writes without the checks that keep an answer on the expert's fields; its "
                "references and numbers were checked only afterwards")
    return flag


def arguments_text(arguments: Mapping[str, Any] | None) -> str:
    """An expert call's arguments in words: ``{"targets": "liver"}`` → "liver", a list → "liver, spleen",
    other fields as "name value"; "" for none."""
    parts = []
    for key, value in dict(arguments or {}).items():
        words = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(words if key in ("targets", "target", "structures", "findings") else f"{key.replace('_', ' ')} {words}")
    return "; ".join(parts)


def _step(name: str, arguments: Mapping[str, Any], status: str, title: str = "") -> dict[str, Any]:
    asked = arguments_text(arguments)
    return {
        "role": "assistant",
        "content": "running…" if status == "pending" else "",
        "metadata": {"title": (title or name) + (f" · {asked}" if asked else ""), "status": status},
    }


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}
