"""Small model first, large model when needed: one turn of the agent on the local model, re-run on the large one
when the local turn is unsure (``vlm.routing.decision``).

A ``small-first`` turn: the question is parsed once (``Agent.parse``); a family the local model is not trusted with
goes straight to the large model. Otherwise the local model runs the turn, its expert steps shown as they happen and
its answer held back; the rules are read off the finished turn (its token probabilities, flags, family). No rule
fires: the held answer is given. One fires: the conversation is put back as it was before the turn and the large
model runs it again, streamed (expert results come from the session's cache, so the experts do not run twice); its
turn is the answer and, when ``log_escalations_to`` is set, is written de-identified to the escalation log. Should the
large model fail, the local turn stands, saying so. ``large-only`` runs every turn on the large model; ``small-only``
streams the local turn and only records what would have escalated.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from vlm.backends.base import ChatBackend, TokenLogprobs
from vlm.conversation import AgentEvent, AgentTurn, Conversation
from vlm.routing.config import RoutingConfig
from vlm.routing.decision import RoutingDecision, decide, out_of_scope
from vlm.routing.escalation_log import EscalationLog

__all__ = ["Router", "MeasuredBackend", "build_router"]

log = logging.getLogger(__name__)

AgentFactory = Callable[[ChatBackend], Any]  # a backend → a ``vlm.agent.Agent`` on it (the caller's turn settings)


class MeasuredBackend:
    """A backend that adds up the log-probabilities of every token its inner backend generates (over all the
    generations of one turn) when the inner backend can report them (``info.token_logprobs``); ``confidence`` is
    None otherwise. One per turn: it holds that turn's tokens."""

    def __init__(self, inner: ChatBackend) -> None:
        self.inner = inner
        self.info = inner.info
        self.logprobs = TokenLogprobs() if getattr(inner.info, "token_logprobs", False) else None

    def __getattr__(self, name: str) -> Any:  # ``model`` (its config and chat format), caches, ... of the inner backend
        return getattr(self.inner, name)

    def stream_chat(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        if self.logprobs is not None:
            kwargs["logprobs"] = self.logprobs
        yield from self.inner.stream_chat(*args, **kwargs)

    def confidence(self, statistic: str) -> float | None:
        """The turn's token probability (``TokenLogprobs.probability``); None when not available."""
        return None if self.logprobs is None else self.logprobs.probability(statistic)


class Router:
    """Routes the turns of one app (or command) between the local backend a caller gives and ``large``.

    large: the large model's ``ChatBackend`` (None under ``small-only``). config: ``RoutingConfig``. escalations:
    where the large model's turns are logged (None: not logged)."""

    def __init__(self, large: ChatBackend | None, config: RoutingConfig, escalations: EscalationLog | None = None) -> None:
        config.check()
        if large is None and config.policy != "small-only":
            raise ValueError(f"a large model backend is needed under policy {config.policy}; got None.")
        self.large = large
        self.config = config
        self.escalations = escalations

    def stream_turn(self, conversation: Conversation, question: str, small: ChatBackend,
                    agent_for: AgentFactory) -> Iterator[AgentEvent]:
        """The events of ``question``'s turn (``Agent.stream_turn``'s), routed; the ``done`` turn carries its
        ``routing`` (``RoutingDecision``). agent_for: builds the agent for a backend (both models get the caller's
        settings and expert registry)."""
        config = self.config
        measured = MeasuredBackend(small)
        local = agent_for(measured)
        intent = local.parse(conversation, question)
        if config.policy == "large-only":
            yield from self._on_large(conversation, question, intent, agent_for, None,
                                      RoutingDecision("large", True, ("policy",), family=intent.family, policy=config.policy))
            return
        if config.policy == "small-first" and out_of_scope(intent, config):
            yield from self._on_large(conversation, question, intent, agent_for, None,
                                      RoutingDecision("large", True, ("out_of_scope",), family=intent.family, policy=config.policy))
            return
        before = _Snapshot.of(conversation)
        held: list[AgentEvent] = []
        turn: AgentTurn | None = None
        for event in local.stream_turn(conversation, question, intent):
            if event.kind == "done":
                turn = event.turn
            elif event.kind in ("tool_call", "tool_result") or config.policy == "small-only":
                yield event  # expert steps as they happen; the answer waits for the decision (unless it cannot escalate)
            else:
                held.append(event)
        if turn is None:
            raise RuntimeError("the agent turn ended without a done event.")
        decision = decide(turn, measured.confidence(config.confidence_statistic), config)
        if not decision.escalated:
            turn.routing = decision
            yield from held
            yield AgentEvent("done", text=turn.answer, turn=turn)
            return
        after = _Snapshot.of(conversation)
        before.restore(conversation)
        yield from self._on_large(conversation, question, intent, agent_for, (turn, held, after),
                                  dataclasses.replace(decision, answered_by="large"))

    def _on_large(self, conversation: Conversation, question: str, intent: Any, agent_for: AgentFactory,
                  local: tuple[AgentTurn, list[AgentEvent], "_Snapshot"] | None, decision: RoutingDecision) -> Iterator[AgentEvent]:
        """The turn on the large model, streamed; its ``done`` turn carries ``decision``. When it fails and ``local``
        (the local turn, its held events and the conversation after it) is there, the local turn stands."""
        turn = None
        messages_before = len(conversation.messages)
        for event in agent_for(self.large).stream_turn(conversation, question, intent):
            if event.kind == "done":
                turn = event.turn
            else:
                yield event
        if turn is None:
            raise RuntimeError("the agent turn ended without a done event.")
        if turn.rounds == 0:  # answered by policy or from the header: no model wrote, nothing to log
            turn.routing = dataclasses.replace(decision, answered_by="", escalated=False)
            yield AgentEvent("done", text=turn.answer, turn=turn)
            return
        failure = next((f.partition(": ")[2] for f in turn.flags if f.startswith("backend error")), "")
        if failure and local is not None:
            log.warning("the large model failed (%s); the local model's answer stands", failure)
            local_turn, held, after = local
            after.restore(conversation)
            local_turn.routing = dataclasses.replace(decision, answered_by="local", large_failed=failure)
            yield from held
            yield AgentEvent("done", text=local_turn.answer, turn=local_turn)
            return
        turn.routing = decision
        if self.escalations is not None and not failure:
            try:
                self.escalations.write(conversation, messages_before, turn, local[0] if local is not None else None)
            except OSError as exc:  # a full or read-only disk costs the training example, not the clinician's answer
                log.error("escalated turn not logged to %s: %s", self.escalations.path, exc.strerror or type(exc).__name__)
        yield AgentEvent("done", text=turn.answer, turn=turn)


def build_router(config: RoutingConfig) -> Router | None:
    """The ``Router`` for ``config`` (the large model connected with ``vlm.backends.openai_api.connect``, the escalation
    log opened), or None when routing is off (``config.enabled``). Raises ``RoutingError`` for unusable settings and
    ``RemoteBackendError`` for a large model server that refuses the key or does not serve the model."""
    if not config.check().enabled:
        return None
    large = None
    if config.large_lm_url:
        from vlm.backends.openai_api import connect

        large = connect(config.large_lm_url, config.large_lm_model, api_key=config.large_lm_api_key or None)
    escalations = EscalationLog(config.log_escalations_to) if config.log_escalations_to is not None else None
    return Router(large, config, escalations)


@dataclass
class _Snapshot:
    """What a turn adds to a conversation, to put it back: the lengths of its lists and the pictures shown."""

    messages: list[dict[str, Any]]
    tool_calls: list[Any]
    turns: list[AgentTurn]
    images_shown: int

    @classmethod
    def of(cls, conversation: Conversation) -> "_Snapshot":
        return cls(list(conversation.messages), list(conversation.tool_calls), list(conversation.turns), conversation.images_shown)

    def restore(self, conversation: Conversation) -> None:
        conversation.messages[:] = self.messages
        conversation.tool_calls[:] = self.tool_calls
        conversation.turns[:] = self.turns
        conversation.images_shown = self.images_shown
