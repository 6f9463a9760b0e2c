"""Decoding constraints: ``transformers`` logits processors that keep an answer's ``[[key]]`` references, the body
side of tool calls and answers, and tool calls' expert names and argument values on what the question and the expert
results allow.

- ``policy``: the rules, one per line (``REFERENCE_RULES``, ``SIDE_RULES``, ``CALL_RULES``), each with a test in a
  clinician's words; the processors read them.
- ``vocabulary``: per tokenizer (computed once, cached) a ``TokenIndex``: each token's text, a prefix index
  (lower-cased text → ids) and id sets of the tokens that can matter; ``RunningText`` decodes only the tokens since a
  verified anchor. A step walks the allowed continuations through the prefix index and takes unions of precomputed
  sets, so its cost is that of the allowed set, not of the vocabulary.
- ``references``, ``sides``, ``tool_args``: the processors; ``masking``: their shared base.
- ``decoding``: ``DecodingConstraints``, what one generation round is kept on (the agent's choice), handed to
  ``ChatBackend.stream_chat(..., constraints=...)``: an in-process backend turns it into these processors
  (``DecodingConstraints.processors``); a remote one cannot, and the agent says so.

A failure inside a constraint does not end the answer: the step is decoded unconstrained, the failure is appended to
the processor's ``failures`` — the ``DecodingConstraints.failures`` it was built from, which the agent reads to flag
the turn — and logged.
"""

from vlm.constraints.decoding import DecodingConstraints
from vlm.constraints.masking import Ban, ConstraintError, GuardedProcessor
from vlm.constraints.policy import OTHER_SIDE, AskedFacts, call_choices
from vlm.constraints.references import ReferenceConstraint
from vlm.constraints.sides import SideConstraint
from vlm.constraints.tool_args import ToolCallConstraint
from vlm.constraints.vocabulary import RunningText, SideSets, TokenIndex, token_index, token_texts

__all__ = ["OTHER_SIDE", "AskedFacts", "Ban", "ConstraintError", "DecodingConstraints", "GuardedProcessor", "ReferenceConstraint", "RunningText",
           "SideConstraint", "SideSets", "TokenIndex", "ToolCallConstraint", "call_choices", "token_index", "token_texts"]
