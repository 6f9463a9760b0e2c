"""Small model first, large model when needed (arXiv 2506.02153, heterogeneous agents): each turn runs on the local
model and goes to a large OpenAI-compatible one when the local turn is unsure, out of scope, or the site's policy says
so; the large model's turns are logged, de-identified, as training data for the local one.

``RoutingConfig`` (the ``[routing]`` settings) → ``build_router`` → ``Router.stream_turn`` (through
``vlm.study_chat.StudyChat``); ``RoutingDecision`` on each turn (``AgentTurn.routing``); ``EscalationLog``;
``m3 routing calibrate`` (``vlm.routing.calibrate``) chooses ``min_token_confidence`` on a validation set.
"""

from vlm.routing.config import FLAG_REASONS, POLICIES, RoutingConfig, RoutingError
from vlm.routing.decision import REASON_WORDS, RoutingDecision, decide

__all__ = ["RoutingConfig", "RoutingError", "RoutingDecision", "Router", "MeasuredBackend", "EscalationLog", "build_router",
           "decide", "POLICIES", "FLAG_REASONS", "REASON_WORDS"]


def __getattr__(name):  # the router and the log load the agent's records and pydicom; the app's config needs neither
    if name in ("Router", "MeasuredBackend", "build_router"):
        import vlm.routing.router

        return getattr(vlm.routing.router, name)
    if name == "EscalationLog":
        from vlm.routing.escalation_log import EscalationLog

        return EscalationLog
    raise AttributeError(name)
