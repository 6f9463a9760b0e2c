"""A chat about one loaded study, as a clinician has it: the one path from (study, slice on screen, question)
to an answer that the app, ``m3 chat``, ``m3 ask`` and ``m3 eval`` all take.

The model is shown the study at the slice on screen (``data.model_view.model_pictures``: a CT its series, a
brain MRI its four sequences, a radiograph its image) once per conversation, as in training. Scrolling to
another slice starts a new conversation with that slice's pictures (the chat the clinician sees is kept by the
caller; expert results are cached by the registry the caller gives), so the model never holds pictures of
several slices or planes it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from vlm.agent import Agent
from vlm.backends.base import ChatBackend, GenerationConfig
from vlm.conversation import AgentEvent, AgentTurn, Conversation
from vlm.routing import Router

__all__ = ["TurnSettings", "StudyChat"]


@dataclass(frozen=True)
class TurnSettings:
    """How one question is answered: at most ``max_rounds`` expert-calling rounds and ``max_new_tokens`` per
    generation (greedy decoding). The app, ``m3 chat``, ``m3 ask`` and ``m3 eval`` share the defaults."""

    max_rounds: int = 3
    max_new_tokens: int = 256
    plan_calls: bool = True  # a measurement question answered without its expert gets the expert run (``vlm.grounding``)

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {self.max_rounds}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")


class StudyChat:
    """One clinician's chat about ``study`` (a ``data.study.Study``) with ``backend`` and the expert
    ``registry``; ``primary`` names the series on screen (``vlm.conversation.study_volumes`` names)."""

    def __init__(self, backend: ChatBackend, registry: Any, study: Any = None, *, settings: TurnSettings | None = None,
                 primary: str | None = None, router: Router | None = None) -> None:
        self.backend = backend
        self.registry = registry
        self.study = study
        self.settings = settings or TurnSettings()
        self.primary = primary
        self.router = router  # ``vlm.routing.Router``: ``backend`` is the local model, the router's the large one
        self.conversation: Conversation | None = None

    @classmethod
    def on_pictures(cls, backend: ChatBackend, registry: Any, images: list, *, settings: TurnSettings | None = None,
                    router: Router | None = None) -> "StudyChat":
        """A chat about pictures alone (a public VQA set's image files): no volumes, so no expert can run."""
        chat = cls(backend, registry, None, settings=settings, router=router)
        chat.conversation = Conversation(images=list(images))
        return chat

    def look_at(self, slice_index: int | None = None, *, on_screen: bool = True) -> Conversation:
        """Put axial slice ``slice_index`` (volume grid; None: the middle) in front of the model. on_screen:
        the clinician sees that axial slice ("in this slice" questions are about it); False while another plane
        is shown. A slice other than the one the model holds starts a new conversation."""
        conv = self.conversation
        if self.study is None:
            raise ValueError("look_at needs a study; this chat was opened on pictures alone (StudyChat.on_pictures).")
        wanted = conv.picture_slice if (conv is not None and slice_index is None) else slice_index
        if conv is None or (wanted is not None and wanted != conv.picture_slice):
            conv = Conversation.from_study(self.study, wanted, primary=self.primary, on_screen=on_screen)
            self.conversation = conv
        conv.shown_slice = conv.picture_slice if on_screen else None
        return conv

    def stream(self, question: str) -> Iterator[AgentEvent]:
        """The agent's events for ``question`` (``vlm.agent.Agent.stream_turn``) on the slice in front of the model,
        routed between the local and the large model when a ``router`` is set."""
        conversation = self.conversation or self.look_at()
        if self.router is not None:
            yield from self.router.stream_turn(conversation, question, self.backend, self._agent)
            return
        yield from self._agent(self.backend).stream_turn(conversation, question)

    def _agent(self, backend: ChatBackend) -> Agent:
        """The agent on ``backend`` with this chat's turn settings and experts."""
        return Agent(backend, self.registry, self.settings.max_rounds,
                     generation=GenerationConfig(max_new_tokens=self.settings.max_new_tokens), plan_calls=self.settings.plan_calls)

    def ask(self, question: str) -> AgentTurn:
        """Answer ``question`` (the whole turn; see ``stream``)."""
        turn = None
        for event in self.stream(question):
            if event.kind == "done":
                turn = event.turn
        if turn is None:
            raise RuntimeError("the agent turn ended without a done event.")
        return turn
