"""The agent loop: the VLM answers, calling experts through the registry when it needs numbers.

A turn: (modality check) → generate → parse tool calls → validate → run the expert on the right
volumes → append a ``tool`` message (``experts.base.tool_message``: the same text as in training data;
plus the overlay as an image when the model takes images; for a yes / no question about the slice on
screen, the result also says what that slice of the expert's mask shows) → generate again, at most ``max_rounds``
tool rounds. A malformed call or an expert error goes back to the model as a tool error. Field
references in the answer (``[[liver volume]]``) are filled from the field tables of the conversation's expert results
(``ExpertResult.fields()``, ``data.tool_text.resolve_references``; the history keeps the model's own text). Numbers in the final
answer must appear in the conversation's tool results, else the turn is flagged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Iterator, Mapping

import numpy as np

from data.slice_facts import asks_about_shown_slice
from data.tool_text import TOOL_CALL_OPEN, format_tool_call, reference_keys, resolve_references
from experts.base import Expert, ExpertError, ExpertResult, tool_message, with_slice_findings
from vlm.agent_context import AGENT_SYSTEM_PROMPT, agent_context, model_config_of
from vlm.backends.base import ChatBackend, GenerationConfig
from vlm.call_repair import repair_arguments, repair_expert
from vlm.constraints import AskedFacts, DecodingConstraints, call_choices
from vlm.conversation import AgentEvent, AgentTurn, Conversation, ToolCall
from vlm.grounding import cite_results, header_answer, planned_call, question_arguments, relevant_doubts
from vlm.intent import POLICY_FAMILIES, QuestionIntent, parse_question
from vlm.refusals import refusal_for
from vlm.safety import modality_mismatch, ungrounded_numbers
from vlm.tools import ReferenceFilter, ToolCallError, ToolCallFilter, legacy_arguments, parse_tool_calls, tool_error_message

__all__ = ["Agent", "AGENT_SYSTEM_PROMPT", "run_agent_turn"]

log = logging.getLogger(__name__)

_IMAGE = "<image>"
REMOTE_UNCONSTRAINED = "constraints not applied (remote model)"


def named_side(question: str) -> str:
    """The one side of the body a question names ("left" or "right"); "" when it names both or neither."""
    sides = {w for w in ("left", "right") if re.search(rf"\b{w}\b", question, re.IGNORECASE)}
    return sides.pop() if len(sides) == 1 else ""


def measured_side(calls: list[ToolCall]) -> str:
    """The one side of the body a turn's successful expert calls named in their arguments ("left kidney"),
    or "" when they named both or neither."""
    text = " ".join(json.dumps(c.arguments) for c in calls if c.result is not None)
    return named_side(text)


class Agent:
    """Drives a ``ChatBackend`` and an expert registry through tool-calling turns.

    registry: ``experts.registry.ExpertRegistry`` (``names``, ``get``, ``run``, ``tool_schemas``).
    max_rounds: most expert-calling rounds per turn (so at most ``max_rounds + 1`` generations).
    constrain_references: each generation gets ``DecodingConstraints``: ``[[key]]`` references only to fields the
    conversation's results hold, expert calls only on the side of the body the question names and, after a call that
    measured one side, answers only about that side; in-process backends apply them, and a step a constraint failed
    on ("constraint failed: …") or a remote model they cannot reach flags the turn.
    """

    def __init__(self, backend: ChatBackend, registry: Any, max_rounds: int = 3, *, system_prompt: str | None = None,
                 generation: GenerationConfig | None = None, experts: list[str] | None = None,
                 constrain_references: bool = True, plan_calls: bool = True, cite: bool = True) -> None:
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}.")
        self.backend = backend
        self.registry = registry
        self.max_rounds = max_rounds
        # the model's context (``vlm.agent_context``): its config's system prompt, the one it was trained with
        self.model_config = model_config_of(backend)
        self.system_prompt = agent_context(self.model_config, ()).system_prompt if system_prompt is None else system_prompt
        self.generation = generation or GenerationConfig()
        self.expert_names = list(experts) if experts is not None else list(registry.names())
        self.constrain_references = constrain_references
        self.plan_calls = plan_calls  # the parsed question's expert runs first when it names a measurement
        self.cite = cite  # answers end with the result fields that answer the question

    def run_turn(self, conversation: Conversation, question: str) -> AgentTurn:
        """Run a whole turn and return it (the streamed events are consumed here)."""
        turn = None
        for event in self.stream_turn(conversation, question):
            if event.kind == "done":
                turn = event.turn
        if turn is None:
            raise RuntimeError("the agent turn ended without a done event.")
        return turn

    def parse(self, conversation: Conversation, question: str, experts: Mapping[str, Expert] | None = None) -> QuestionIntent:
        """``question`` parsed (``vlm.intent.parse_question``) against the study's modalities, the experts' own metadata
        (the modalities they read, the words of what they report; ``experts``: those that load) and the conversation's
        earlier questions."""
        experts = self._load_experts()[0] if experts is None else experts
        return parse_question(question, conversation.modalities, {n: e.modalities for n, e in experts.items()},
                              [t.intent for t in conversation.turns if t.intent is not None],
                              {n: e.vocabulary for n, e in experts.items()}, {n: e.vocabulary_kinds for n, e in experts.items()})

    def stream_turn(self, conversation: Conversation, question: str, intent: QuestionIntent | None = None) -> Iterator[AgentEvent]:
        """Events as they happen: answer text (``token``), ``tool_call``, ``tool_result``, ``error``,
        and finally ``done`` with the ``AgentTurn``. intent: the question as ``parse`` read it, when the caller has
        it already (``vlm.routing`` reads it before choosing the model)."""
        t0 = time.perf_counter()
        turn = AgentTurn(question=question, answer="")
        experts, unavailable = self._load_experts()
        intent = self.parse(conversation, question, experts) if intent is None else intent
        self._add_user_message(conversation, question)
        turn.intent = intent
        declined = refusal_for(question, intent.family if intent.family in POLICY_FAMILIES else "")
        if declined is not None:  # identifiers, clinical decisions, greetings: answered by policy, no expert runs
            turn.flags.append(f"refusal: {declined.kind}")
            yield from self._finish(conversation, turn, declined.answer, t0, stream_answer=True)
            return
        from_header = header_answer(intent, conversation.volumes)
        if from_header is not None:  # modality and series: the header knows, the picture only suggests
            turn.flags.append("answered from the header")
            yield from self._finish(conversation, turn, from_header, t0, stream_answer=True, known=[from_header])
            return
        refusal = modality_mismatch(intent, conversation.modalities, experts)
        if refusal is not None:
            turn.flags.append("modality mismatch")
            yield from self._finish(conversation, turn, refusal, t0, stream_answer=True)
            return
        # the tools offered are the experts that read this study (all of them when none does: the model's call then
        # gets the clear error)
        offered = {n: e for n, e in experts.items() if n in intent.experts} or experts
        tools = agent_context(self.model_config, offered.values()).tools
        stop = list(dict.fromkeys(self.generation.stop + ["</tool_call>", ")>"]))
        visible_parts: list[str] = []
        limit_note = ""
        planned = False
        while True:
            turn.rounds += 1
            config = GenerationConfig(self.generation.max_new_tokens, self.generation.temperature, self.generation.top_p, stop)
            constraints = self._constraints(conversation, intent, turn, offered) if self.constrain_references else None
            text, shown = "", []
            filt = ToolCallFilter()
            refs = ReferenceFilter(lambda ref: resolve_references(ref, self._sources(conversation))[0])
            try:
                for piece in self.backend.stream_chat(conversation.chat_messages(), conversation.message_images(), tools,
                                                      config, conversation.cache_id, constraints=constraints):
                    text += piece
                    vis = filt.feed(piece)
                    if vis:
                        shown.append(vis)
                        vis = refs.feed(vis)
                        if vis:
                            yield AgentEvent("token", text=vis)
            except Exception as exc:  # any backend failure ends the turn with a clear message, never a crash
                log.exception("chat backend failed")
                turn.flags.append(f"backend error: {type(exc).__name__}")
                self._flag_constraints(turn, constraints)
                yield AgentEvent("error", text=f"The language model failed: {exc}")
                visible_parts.append("".join(shown))
                yield from self._finish(conversation, turn, " ".join(p for p in visible_parts if p).strip()
                                        or "The model could not answer this question.", t0, stream_answer=False, record=False)
                return
            self._flag_constraints(turn, constraints)
            visible, calls = parse_tool_calls(text)
            failed = any(c.name in intent.experts and c.result is None for c in turn.tool_calls)  # a failed expert is not run again
            # the question's call when the model answered without it, or without part of it ("spleen volume and liver lesions?")
            plan = planned_call(intent, experts, conversation.tool_calls) if self.plan_calls and not (calls or planned or failed) else None
            if plan is not None:
                # the model answered a measurement question without the result it needs: the question's expert runs
                # (its arguments what the question names) and the model writes the answer again from the result
                planned = True
                turn.flags.append("expert called for the question")
                name, arguments = plan
                calls = [ToolCall(name, arguments, raw=format_tool_call(name, arguments), repairs=["called for the question"])]
                text = calls[0].raw
            if not calls:
                tail = refs.feed(filt.flush()) + refs.flush()
                if tail:
                    yield AgentEvent("token", text=tail)
                visible_parts.append(text.strip())
                break
            visible_parts.append(visible)
            if turn.rounds > self.max_rounds:
                turn.flags.append(f"tool round limit reached ({self.max_rounds})")
                note = (f"I stopped after {self.max_rounds} expert calls for one question. "
                        + " ".join(c.result.summary for c in turn.tool_calls if c.result is not None and c.result.summary))
                yield AgentEvent("token", text=note)
                limit_note = note  # the agent's words, not the model's: said after the answer is checked
                break
            end = text.rfind(calls[-1].raw) + len(calls[-1].raw)
            conversation.messages.append({"role": "assistant", "content": text[:end]})
            for call in calls:
                yield AgentEvent("tool_call", text=call.raw, tool_call=call)
                self._run_call(conversation, call, experts, unavailable, turn)
                turn.tool_calls.append(call)
                yield AgentEvent("tool_result", text=call.error or (call.result.summary if call.result else ""), tool_call=call)
        answer = " ".join(p for p in visible_parts if p).strip()
        yield from self._finish(conversation, turn, answer, t0, stream_answer=False, intent=intent, limit=limit_note)

    # ---- steps -------------------------------------------------------------------------------------
    def _constraints(self, conversation: Conversation, intent: QuestionIntent, turn: AgentTurn,
                     offered: Mapping[str, Expert]) -> DecodingConstraints:
        """This round's decoding constraints: references only to fields the conversation's results hold, a reference
        opening the answer to the fields that answer the question (else to what the parsed question asks), calls on the
        side the question names, to an ``offered`` expert, with argument choices narrowed to what the question names,
        the answer on the side the turn's calls measured."""
        return DecodingConstraints(references=tuple(reference_keys(self._sources(conversation))), answer_keys=intent.answer_keys(),
                                   call_side=intent.side, answer_side=measured_side(turn.tool_calls), asked=AskedFacts.of(intent),
                                   call_arguments=call_choices({n: e.parameters for n, e in offered.items()},
                                                               {n: question_arguments(e, intent) for n, e in offered.items()}))

    def _flag_constraints(self, turn: AgentTurn, constraints: DecodingConstraints | None) -> None:
        """Flag what the round's constraints could not do: steps a constraint failed on (decoded unconstrained), or a
        remote model they cannot reach (once a turn)."""
        if constraints is None:
            return
        if constraints.failures:
            more = len(constraints.failures) - 1
            turn.flags.append(f"constraint failed: {constraints.failures[0]}" + (f" (and {more} more step{'s' if more > 1 else ''})" if more else ""))
        remote = getattr(getattr(self.backend, "info", None), "remote", False)
        if remote and constraints.active and REMOTE_UNCONSTRAINED not in turn.flags:
            turn.flags.append(REMOTE_UNCONSTRAINED)

    def _load_experts(self) -> tuple[dict[str, Expert], dict[str, str]]:
        """Experts that load (the registry caches them), and the load error of those that do not: a
        missing model must not stop the chat, only that expert's calls."""
        experts, unavailable = {}, {}
        for name in self.expert_names:
            try:
                experts[name] = self.registry.get(name)
            except ExpertError as exc:
                log.warning("expert %s unavailable: %s", name, exc)
                unavailable[name] = str(exc)
        return experts, unavailable

    def _add_user_message(self, conversation: Conversation, question: str) -> None:
        if not conversation.messages and self.system_prompt:
            conversation.messages.append({"role": "system", "content": self.system_prompt})
        new_images = conversation.images[conversation.images_shown:]
        conversation.images_shown = len(conversation.images)
        content = (_IMAGE + "\n") * len(new_images) + question
        conversation.messages.append({"role": "user", "content": content, "images": list(new_images)})

    def _run_call(self, conversation: Conversation, call: ToolCall, experts: Mapping[str, Expert], unavailable: Mapping[str, str],
                  turn: AgentTurn) -> None:
        """Run one call; sets ``call.result`` or ``call.error`` and appends the tool message."""
        t0 = time.perf_counter()
        images: list[np.ndarray] = []
        if call.error is None:
            try:
                if call.name in unavailable:
                    raise ToolCallError(f"{call.name} is unavailable: {unavailable[call.name]}")
                name, note = repair_expert(call.name, experts, conversation.volumes)
                if note:  # the model's arguments were for another expert: the substitute runs on its defaults
                    call.name, call.arguments, call.repairs = name, {}, [note]
                expert = experts.get(call.name)
                if expert is None:
                    raise ToolCallError(f"unknown expert {call.name!r}; available experts: {', '.join(experts) or 'none'}.")
                call.arguments = legacy_arguments(call.arguments, expert.parameters)
                if "called for the question" not in call.repairs:  # a planned call already names what the question does
                    named_by = question_arguments(expert, turn.intent) if turn.intent is not None else None
                    call.arguments, notes = repair_arguments(expert, call.arguments, turn.question, named_by)
                    call.repairs += notes
                if call.repairs:
                    log.info("expert call %s kept on the question: %s", call.name, "; ".join(call.repairs))
                    _rewrite_call(conversation, call)
                volumes = expert.select_inputs(conversation.volumes, conversation.primary)
                call.result = self.registry.run(call.name, volumes, **call.arguments)
                on_slice = turn.intent is not None and turn.intent.scope == "slice"
                if conversation.shown_slice is not None and (on_slice or asks_about_shown_slice(turn.question)):
                    call.result = with_slice_findings(call.result, conversation.shown_slice)
            except (ToolCallError, ExpertError) as exc:
                call.error = str(exc)
            except Exception as exc:  # an expert bug must not end the chat: the model sees it as a tool error
                log.exception("expert %s failed", call.name)
                call.error = f"{call.name} failed internally ({type(exc).__name__}); try another question or expert."
        call.seconds = time.perf_counter() - t0
        if call.result is not None:
            content = tool_message(call.result)
            overlay = self._overlay(call, conversation)
            if overlay is not None:
                turn.overlays.append(overlay)
                if getattr(self.backend.info, "takes_images", False):
                    images = [overlay]
                    content = _IMAGE + "\n" + content
        else:
            content = tool_error_message(call.name, call.error or "")
        conversation.messages.append({"role": "tool", "name": call.name or "unknown", "content": content, "images": images})
        conversation.tool_calls.append(call)

    @staticmethod
    def _sources(conversation: Conversation) -> list[ExpertResult]:
        """The conversation's expert results, oldest first (their ``fields()`` fill and offer references)."""
        return [c.result for c in conversation.tool_calls if c.result is not None]

    def _titles(self, turn: AgentTurn, conversation: Conversation | None = None) -> dict[str, str]:
        """What a clinician sees for each expert this turn or the conversation ran (``Expert.title``), for the
        answer's source line."""
        titles = {}
        earlier = {getattr(r, "expert", "") for r in self._sources(conversation)} if conversation is not None else set()
        for name in ({c.name for c in turn.tool_calls if c.result is not None} | earlier) - {""}:
            try:
                titles[name] = self.registry.get(name).title or name
            except Exception:  # an expert the registry cannot give now: its name stands
                titles[name] = name
        return titles

    def _overlay(self, call: ToolCall, conversation: Conversation) -> np.ndarray | None:
        result = call.result
        if result is None or result.label_volume is None or result.overlay_renderer is None:
            return None
        grid = result.label_volume.shape
        base = next((v for v in conversation.volumes.values() if v.shape == grid), None)
        if base is None:
            return None
        try:
            return np.asarray(result.render_overlay(base), dtype=np.uint8)
        except ExpertError as exc:
            log.warning("no overlay for %s: %s", call.name, exc)
            return None

    def _finish(self, conversation: Conversation, turn: AgentTurn, answer: str, t0: float, *, stream_answer: bool,
                record: bool = True, intent: QuestionIntent | None = None, known: list[str] | None = None,
                limit: str = "") -> Iterator[AgentEvent]:
        if stream_answer:
            yield AgentEvent("token", text=answer)
        if record:
            conversation.messages.append({"role": "assistant", "content": answer})  # as written: references unfilled
        answer, unresolved = resolve_references(answer, self._sources(conversation))
        turn.flags.extend(f"unresolved reference: {key}" for key in unresolved)
        # a follow-up answered from an earlier turn's results is checked against them too ("How big is the right kidney?")
        if intent is not None and self.cite and (turn.tool_calls or (intent.needs_expert and self._sources(conversation))):
            written = answer
            answer, flags = cite_results(intent, answer, self._sources(conversation),
                                         [c.result.summary for c in turn.tool_calls if c.result is not None and c.result.summary],
                                         self._titles(turn, conversation))
            turn.flags.extend(flags)
            reasons = list(dict.fromkeys(r for c in turn.tool_calls if c.result is not None for r in getattr(c.result, "uncertain", ())))
            reasons = relevant_doubts(intent, reasons)
            if reasons:  # the expert doubts its own result: the answer says so whatever the model wrote
                turn.flags.append("expert uncertain")
                if "uncertain" not in answer.lower():
                    answer += "\n\nUncertain: the expert marked this result uncertain (" + "; ".join(reasons) + ")."
            if answer != written:
                yield AgentEvent("token", text=answer[len(written):] if answer.startswith(written) else "\n\n" + answer)
        results = self._sources(conversation)
        sources = [tool_message(r) for r in results] + [r.to_json_text() for r in results] + (known or [])
        missing = ungrounded_numbers(answer, sources, turn.question)
        if missing:
            turn.flags.extend(f"ungrounded number: {n}" for n in missing)
            note = (f"\n\n(Note: {', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not appear in any expert "
                    "result of this conversation; verify before use.)")
            yield AgentEvent("token", text=note)
            answer += note
        if limit:
            answer = limit + ("\n\n" + answer if answer else "")
        if not answer.strip():  # nothing stood: say why rather than show an empty answer
            failed = [c.error for c in turn.tool_calls if c.error]
            answer = (("I could not answer this: " + " ".join(dict.fromkeys(failed)) + " Ask again, or run the expert from its "
                       "button.") if failed else "I could not answer this from the study; please ask it another way.")
            turn.flags.append("no answer")
            yield AgentEvent("token", text=answer)
        turn.answer = answer
        turn.seconds = time.perf_counter() - t0
        conversation.turns.append(turn)
        yield AgentEvent("done", text=answer, turn=turn)


def _rewrite_call(conversation: Conversation, call: ToolCall) -> None:
    """The history's last assistant message with ``call`` as it was run (its repaired arguments), so the model
    reads the result beside the call that produced it."""
    message = conversation.messages[-1] if conversation.messages else None
    legacy = not call.raw.lstrip().startswith(TOOL_CALL_OPEN)  # a VILA-M3 trigger keeps the model's own wording
    if message is not None and message["role"] == "assistant" and not legacy and call.raw in message["content"]:
        message["content"] = message["content"].replace(call.raw, format_tool_call(call.name, call.arguments), 1)


def run_agent_turn(backend: ChatBackend, registry: Any, conversation: Conversation, question: str, max_rounds: int = 3) -> AgentTurn:
    """One turn with a default ``Agent`` (the function behind ``m3 chat``)."""
    return Agent(backend, registry, max_rounds).run_turn(conversation, question)
