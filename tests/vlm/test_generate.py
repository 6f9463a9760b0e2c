"""The in-process backend: streaming, cached image features, prefix KV-cache reuse with identical results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm.backends.base import GenerationConfig
from vlm.backends.hf_vlm import HFVLMBackend

IMG = np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8)
CFG = GenerationConfig(max_new_tokens=6)


def _asked(question: str, modality: str):
    """What ``question`` asks of a study of ``modality``, parsed once as the agent parses it."""
    from vlm.constraints import AskedFacts
    from vlm.intent import parse_question

    return AskedFacts.of(parse_question(question, (modality,)))


def _first_messages():
    return [{"role": "system", "content": "You are m3."}, {"role": "user", "content": "<image>\nWhat is the liver volume?"}]


def test_kv_cache_reuse_gives_identical_logits(tiny_m3):
    from transformers import DynamicCache

    backend = HFVLMBackend(tiny_m3)
    ids = backend.prompt_ids(_first_messages())
    full = torch.tensor([tiny_m3.expand_image_tokens(ids)])
    feats = tiny_m3.encode_images(tiny_m3.vision_tower.preprocess([IMG]))
    with torch.no_grad():
        embeds = tiny_m3.embed(full, feats)
        whole = tiny_m3.llm(inputs_embeds=embeds).logits
        cache = DynamicCache(config=tiny_m3.llm.config)
        split = 20  # inside the image tokens' neighbourhood: prefix = system + image
        tiny_m3.llm(inputs_embeds=embeds[:, :split], cache=cache, use_cache=True)
        rest = tiny_m3.llm(inputs_embeds=embeds[:, split:], cache=cache, use_cache=True).logits
    assert torch.allclose(whole[:, split:], rest, atol=1e-5)


def test_streaming_and_follow_up_reuses_image_and_prefix(tiny_m3, monkeypatch):
    backend = HFVLMBackend(tiny_m3)
    encoded = []
    real = tiny_m3.encode_images
    monkeypatch.setattr(tiny_m3, "encode_images", lambda px: encoded.append(px.shape[0]) or real(px))

    pieces = list(backend.stream_chat(_first_messages(), [IMG], config=CFG, cache_key="conv-1"))
    first = "".join(pieces)
    cache = backend.caches.get("conv-1")
    assert cache.reused_tokens == 0 and encoded == [1]
    first_prompt = cache.prompt_tokens

    follow = _first_messages() + [{"role": "assistant", "content": first}, {"role": "user", "content": "And the spleen?"}]
    cached_text = "".join(backend.stream_chat(follow, [IMG], config=CFG, cache_key="conv-1"))
    assert encoded == [1]  # the image was not encoded again
    assert cache.reused_tokens >= first_prompt  # the whole first prompt (image included) came from the cache
    assert cache.prompt_tokens - cache.reused_tokens < 40

    fresh = HFVLMBackend(tiny_m3)
    assert "".join(fresh.stream_chat(follow, [IMG], config=CFG)) == cached_text  # same answer as without caches


def test_changed_image_is_not_served_from_cache(tiny_m3):
    backend = HFVLMBackend(tiny_m3)
    list(backend.stream_chat(_first_messages(), [IMG], config=CFG, cache_key="c"))
    other = 255 - IMG
    text = "".join(backend.stream_chat(_first_messages(), [other], config=CFG, cache_key="c"))
    cache = backend.caches.get("c")
    assert cache.reused_tokens < cache.prompt_tokens - tiny_m3.tokens_per_image  # stops before the image
    assert text == "".join(HFVLMBackend(tiny_m3).stream_chat(_first_messages(), [other], config=CFG))


def test_image_count_must_match_placeholders(tiny_m3):
    import pytest

    from vlm.model import ModelLoadError

    backend = HFVLMBackend(tiny_m3)
    with pytest.raises(ModelLoadError, match="placeholders"):
        list(backend.stream_chat(_first_messages(), [], config=CFG))


def _scores_after(constraint, tokenizer, text):
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    scores = torch.zeros(1, len(tokenizer))
    return constraint(ids, scores)[0]


def test_reference_constraint_keeps_the_key_on_the_structure_its_sentence_names(m3_tokenizer):
    from vlm.generate import ReferenceConstraint, _token_texts

    tok = m3_tokenizer
    pieces = _token_texts(tok)
    keys = ["left kidney volume", "left kidney", "liver volume", "liver", "liver tumor count", "liver tumor"]
    c = ReferenceConstraint(tok, keys)
    # the sentence names the left kidney: the reference can only spell "left kidney volume]]"
    row = _scores_after(c, tok, "The left kidney volume is [[")
    allowed = [pieces[i] for i in range(len(pieces)) if row[i] == 0]
    assert allowed and all("left kidney volume]]".startswith(p.lower()) for p in allowed)
    assert row[tok.convert_tokens_to_ids("r")] == -float("inf")
    # "Liver tumors:" names the liver tumor (plural, longest name first), not the liver
    assert c.allowed("Liver tumors: ") == {"liver tumor", "liver tumor count"}
    assert c.allowed("Organ volumes: liver [[liver volume]]; left kidney ") == {"left kidney", "left kidney volume"}
    row = _scores_after(c, tok, "Liver tumors: [[liver tumor")
    rest = [pieces[i].lower() for i in range(len(pieces)) if row[i] == 0]
    assert rest and all("]]".startswith(p) or " count]]".startswith(p) for p in rest)
    # a sentence naming no field of the results (or a structure none measured) is left to the model:
    # the agent then shows "(not in the expert result)" instead of another structure's value
    for text in ("The spleen volume is [[", "It is [[", '<tool_call>{"arguments": [['):
        assert torch.all(_scores_after(c, tok, text) == 0), text
    # outside a reference nothing is masked
    assert torch.all(_scores_after(c, tok, "The left kidney volume is ") == 0)


def test_a_reference_opening_the_answer_names_what_the_question_names(m3_tokenizer):
    from vlm.generate import ReferenceConstraint, _token_texts

    tok = m3_tokenizer
    pieces = _token_texts(tok)
    keys = ["tumor", "tumor?", "edema", "edema?", "edema volume", "hemisphere", "left hemisphere"]
    c = ReferenceConstraint(tok, keys, asked=_asked("Could you tell me: do you see edema? Please answer yes or no.", "MR"))
    assert c.allowed("") == c.allowed(" ") == {"edema?"}  # a yes / no question: the yes / no field of the finding it names
    assert ReferenceConstraint(tok, keys, asked=_asked("How large is the edema?", "MR")).allowed("") == {"edema", "edema volume"}
    row = _scores_after(c, tok, "[[")
    allowed = [pieces[i].lower() for i in range(len(pieces)) if row[i] == 0]
    assert allowed and not any(p.startswith("h") for p in allowed)  # never "hemisphere" for a yes / no question
    assert c.allowed("The tumor is in the ") == {"tumor", "tumor?"}  # words of its own: the answer's subject
    side = ReferenceConstraint(tok, keys, asked=_asked("Is the lesion in the left or the right hemisphere?", "MR"))
    assert side.allowed("") == {"hemisphere"}  # a choice of sides asks for the side, not the "left hemisphere" finding
    assert ReferenceConstraint(tok, keys, asked=_asked("Is it abnormal?", "MR")).allowed("") == {"tumor?", "edema?"}  # names none: any
    brain = keys + ["necrosis", "necrosis?", "enhancing tumor", "enhancing tumor?"]
    for q, field in (("Please tell me: is there central necrosis?", "necrosis?"), ("Does the tumour enhance after contrast?", "enhancing tumor?"),
                     ("Is there surrounding oedema?", "edema?"), ("Is there a tumor in this study?", "tumor?"),
                     ("Does the mass enhance?", "enhancing tumor?")):
        assert ReferenceConstraint(tok, brain, asked=_asked(q, "MR")).allowed("") == {field}, q
    # a wh-question naming no field: any field but a yes / no one
    assert ReferenceConstraint(tok, keys, asked=_asked("What do you see?", "MR")).allowed("") == {"tumor", "edema", "edema volume", "hemisphere",
                                                                                               "left hemisphere"}
    # which side: the side field, not the tumour it names ("present." was the answer); "where" asks it of a brain too
    for q in ("Can you check: which side of the brain contains the lesion? Thanks.", "Could you tell me: which side of the brain contains the tumor?",
              "Which hemisphere is the tumour in?", "Where is the mass?"):
        assert ReferenceConstraint(tok, keys, asked=_asked(q, "MR")).allowed("") == {"hemisphere"}, q
    # a request about a named finding asks whether it is there (the agent answers it from ``tumor?`` too)
    assert ReferenceConstraint(tok, keys, asked=_asked("Tell me about the mass.", "MR")).allowed("") == {"tumor?"}
    # no question: an opening reference is left to the model
    assert torch.all(_scores_after(ReferenceConstraint(tok, keys), tok, "[[") == 0)


def test_side_constraint_keeps_the_call_on_the_side_the_question_names(m3_tokenizer):
    from vlm.agent import named_side
    from vlm.generate import SideConstraint, _token_texts

    tok = m3_tokenizer
    pieces = _token_texts(tok)
    c = SideConstraint(tok, "left")
    start = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "'
    row = _scores_after(c, tok, start)
    assert all(row[i] == -float("inf") for i, p in enumerate(pieces) if p.lower().lstrip().startswith("ri"))
    assert all(row[i] == 0 for i, p in enumerate(pieces) if p.lower().lstrip().startswith("le"))
    # a word on its way to "right" cannot be finished, whatever the tokenizer's pieces
    row = _scores_after(c, tok, start + "r")
    on_the_way = [i for i, p in enumerate(pieces) if p and "right".startswith("r" + p.lower())]
    assert on_the_way and all(row[i] == -float("inf") for i in on_the_way)
    assert row[tok.convert_tokens_to_ids("e")] == 0  # "re…" is not the other side
    # outside a tool call (the answer may compare both sides) and after it closes, nothing is masked
    assert torch.all(_scores_after(c, tok, "The right kidney is ") == 0)
    assert torch.all(_scores_after(c, tok, '<tool_call>{"name": "x"}</tool_call> The ') == 0)
    # guarding the answer after a call that measured the left side: only a word that can be nothing but
    # "right" is stopped ("rib…", "ri…" stay free); inside a call nothing is masked
    a = SideConstraint(tok, "left", in_answer=True)
    row = _scores_after(a, tok, '<tool_call>{"a": 1}</tool_call>The righ')
    assert all(row[i] == -float("inf") for i, p in enumerate(pieces) if p and "right".startswith("righ" + p.lower()))
    row = _scores_after(a, tok, "The ri")
    assert all(row[i] == 0 for i, p in enumerate(pieces) if len("ri" + p) < 4 or not "right".startswith("ri" + p.lower()))
    assert torch.all(_scores_after(a, tok, '<tool_call>{"targets": "') == 0)
    assert named_side("Tell me the volume of the LEFT kidney?") == "left"
    assert named_side("Compare the left and right lungs.") == "" and named_side("How big is the liver?") == ""
    with pytest.raises(ValueError):
        SideConstraint(tok, "both")


def test_agent_sends_the_question_side_to_the_backend():
    from vlm.agent import Agent
    from vlm.conversation import Conversation

    seen = []

    class Backend:
        def stream_chat(self, messages, images, tools=None, config=None, cache_id=None, constraints=None):
            seen.append(constraints.call_side if constraints else "")
            yield "It is a CT."

    class Registry:
        def names(self):
            return []

    agent = Agent(Backend(), Registry())
    conv = Conversation()
    agent.run_turn(conv, "How large is the right lung?")
    agent.run_turn(conv, "And the heart?")
    assert seen == ["right", ""]
    Agent(Backend(), Registry(), constrain_references=False).run_turn(Conversation(), "The left lung?")
    assert seen[-1] == ""


def test_a_question_about_the_slice_on_screen_is_answered_by_its_in_this_slice_field(m3_tokenizer):
    from vlm.generate import ReferenceConstraint

    keys = ["kidney cyst", "kidney cyst?", "kidney cyst count", "contrast?", "arterial phase?", "kidney cyst in this slice?",
            "spleen volume", "spleen in this slice?"]
    for q, field in (("Looking at the image, is a kidney cyst shown in this slice?", {"kidney cyst in this slice?"}),
                     ("Could you tell me: can you see the spleen included here? Thanks.", {"spleen in this slice?"}),
                     ("Is any cystic renal lesion visible on this slice?", {"kidney cyst in this slice?"}),
                     # naming no field: any slice field, never the study's
                     ("Is anything abnormal shown in this slice?", {"kidney cyst in this slice?", "spleen in this slice?"}),
                     ("Is there a kidney cyst anywhere in the scan?", {"kidney cyst?"}),
                     ("Does the patient have any cystic renal lesion in this study?", {"kidney cyst?"}),
                     ("Is there anything abnormal in this study?", {"kidney cyst?", "contrast?", "arterial phase?"})):
        assert ReferenceConstraint(m3_tokenizer, keys, asked=_asked(q, "CT")).allowed("") == field, q
    # without slice fields (the result was not asked about the slice) the study's fields answer, as before
    study = [k for k in keys if "slice" not in k]
    assert ReferenceConstraint(m3_tokenizer, study, asked=_asked("Is a kidney cyst shown in this slice?", "CT")).allowed("") == {"kidney cyst?"}


def test_a_yes_no_question_naming_a_finding_by_a_synonym_reads_that_findings_field(m3_tokenizer):
    from vlm.generate import ReferenceConstraint

    brain = ["tumor", "tumor?", "enhancing tumor?", "necrosis?", "edema?", "left hemisphere?", "hemisphere"]
    chest = ["cardiomegaly?", "pleural effusion?", "nodule?", "pneumothorax?", "consolidation?"]
    for keys, q, field in ((brain, "Looking at the image, is there a mass in this study? Thank you.", "tumor?"),
                           (chest, "Looking at the image, does the patient have any collapsed lung? Thank you.", "pneumothorax?"),
                           (chest, "Please tell me: does the patient have an enlarged heart? Thanks.", "cardiomegaly?"),
                           (chest, "Is there a pleural fluid collection?", "pleural effusion?"),
                           (chest, "Is there any nodular opacity?", "nodule?")):
        assert ReferenceConstraint(m3_tokenizer, keys, asked=_asked(q, "MR" if keys is brain else "DX")).allowed("") == {field}, q
