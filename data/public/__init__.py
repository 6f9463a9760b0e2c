"""Loaders for the public medical VQA sets VQA-RAD, SLAKE and PathVQA in their released formats,
returning the same LLaVA records as the phantom generators (``meta.answer_type`` closed / open)."""

from data.public.pathvqa import load_pathvqa
from data.public.records import PublicFormatError, vqa_record
from data.public.slake import load_slake
from data.public.vqa_rad import load_vqa_rad

__all__ = ["load_vqa_rad", "load_slake", "load_pathvqa", "PublicFormatError", "vqa_record"]
