"""PathVQA (He et al. 2020): question–answer files → LLaVA records.

The release ships pickles ``qas/<split>/<split>_qa.pkl`` (a list of ``{"image": "train_0422",
"question", "answer"}``) with images at ``images/<split>/<image>.jpg``; some copies use the LXMERT
form ``{"img_id", "sent", "label": {answer: score}}``, and JSON copies of either. Pickles are read with
an unpickler that only builds plain containers and strings, so a crafted file cannot run code.
Yes/no answers are the closed questions.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from data.public.records import PublicFormatError, normalise_answer_type, vqa_record

__all__ = ["load_pathvqa"]


def load_pathvqa(qa_path: str | Path, image_root: str | Path | None = None, *, image_ext: str = ".jpg") -> list[dict]:
    """Records of one PathVQA split (``.pkl`` or ``.json``). image_root: the split's image folder
    (default ``images/<split>`` two levels above the file, as in the release)."""
    path = Path(qa_path)
    entries = _read(path)
    split = path.parent.name
    root = Path(image_root) if image_root is not None else path.parent.parent.parent / "images" / split
    out = []
    for n, e in enumerate(entries):
        if not isinstance(e, dict):
            raise PublicFormatError(f"{path.name}: entry {n} → expected a dict → found {type(e).__name__}.")
        image = e.get("image", e.get("img_id"))
        question = e.get("question", e.get("sent"))
        answer = e.get("answer")
        if answer is None and isinstance(e.get("label"), dict) and e["label"]:
            answer = max(e["label"].items(), key=lambda kv: kv[1])[0]
        if image is None or question is None or answer is None:
            raise PublicFormatError(f"{path.name}: entry {n} → expected image/question/answer (or img_id/sent/label) → "
                                    f"found keys {sorted(e)} → is this a PathVQA qa file?")
        name = str(image) if Path(str(image)).suffix else f"{image}{image_ext}"
        answer = str(answer).strip()
        out.append(vqa_record(f"pathvqa-{split}-{n}", root / name, question, answer, normalise_answer_type(None, answer), "pathvqa"))
    return out


class _PlainUnpickler(pickle.Unpickler):
    """Builds only built-in containers and scalars; refuses every class (no code can run)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: PathVQA files hold only lists, dicts and strings.")


def _read(path: Path) -> list:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PublicFormatError(f"{path.name}: could not be read ({exc.strerror}).") from None
    try:
        data = json.loads(raw.decode("utf-8")) if path.suffix == ".json" else _PlainUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, EOFError, ValueError) as exc:
        raise PublicFormatError(f"{path.name}: not a PathVQA qa file ({exc}).") from None
    if not isinstance(data, list):
        raise PublicFormatError(f"{path.name}: expected a list of questions, found {type(data).__name__}.")
    return data
