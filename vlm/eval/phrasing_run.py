"""``m3 eval --phrasings SET``: the frozen held-out phrasing set asked of a model (and a baseline, in the same run,
on the same studies and path), scored per intent, study and style; a Markdown table and ``phrasings.json``.

Identical expert calls on the same study are run once (``CachedRegistry``): the experts are deterministic, as the
app's per-session cache assumes, and 400 questions would otherwise re-run a 3D segmentation each.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from vlm.eval.phrasings import ask_phrasings, score_phrasing_answers

__all__ = ["CachedRegistry", "evaluate_phrasings"]

log = logging.getLogger(__name__)


class CachedRegistry:
    """An expert registry whose ``run`` returns the stored result of an identical earlier call (same expert, same
    input volumes, same arguments); everything else is the wrapped registry's."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._results: dict[tuple, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def run(self, name: str, volumes: Any, **arguments: Any) -> Any:
        import copy

        inputs = tuple(sorted((k, id(v)) for k, v in volumes.items())) if isinstance(volumes, Mapping) else id(volumes)
        key = (name, inputs, json.dumps(arguments, sort_keys=True, default=str))
        if key not in self._results:
            self._results[key] = self._registry.run(name, volumes, **arguments)  # an ExpertError is not stored
        return copy.copy(self._results[key])


def evaluate_phrasings(model: Any, set_path: str | Path, out_dir: str | Path, *, seed: int = 9001, baseline: str = "",
                       progress: bool = True, device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Ask and score the set with ``model`` (a folder or a ``ChatBackend``) and, when named, a baseline
    (``vlm.eval.baselines.BASELINES``) on phantom studies of ``seed``; writes ``phrasings.json`` and
    ``phrasings.md`` into ``out_dir`` and returns ``{"model": scores, "baseline": scores}``. device / dtype: where a
    model folder loads (``vlm.device.resolve_device``; None = CPU, auto precision)."""
    from experts.registry import default_registry
    from vlm.backends import load_backend
    from vlm.eval.baselines import BASELINES

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {"model": model if hasattr(model, "stream_chat") else load_backend(model, device=device, dtype=dtype)}
    if baseline:
        runs["baseline"] = BASELINES[baseline]()
    registry = CachedRegistry(default_registry())
    report: dict[str, Any] = {"set": str(set_path), "seed": seed}
    for name, backend in runs.items():
        records = ask_phrasings(backend, registry, set_path, seed, progress=progress)
        scores = score_phrasing_answers([r["item"] for r in records], records, [r["truth"] for r in records])
        report[name] = scores
        (out_dir / f"{name}_phrasing_answers.json").write_text(json.dumps(records, indent=1, default=str) + "\n")
    (out_dir / "phrasings.json").write_text(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "items"} if isinstance(v, dict) else v)
                                                        for k, v in report.items()}, indent=2) + "\n")
    (out_dir / "phrasings.md").write_text(_table(report))
    return report


def _table(report: dict[str, Any]) -> str:
    cols = [c for c in ("model", "baseline") if c in report]
    lines = [f"Held-out phrasing set `{report['set']}`, phantom seed {report['seed']}; fraction answered right.", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines.append("| **overall** | " + " | ".join(f"**{report[c]['overall']:.3f}**" for c in cols) + " |")
    for group in ("per_study", "per_intent", "per_style"):
        for key in report["model"][group]:
            n = report["model"][group][key]["n"]
            lines.append(f"| {group[4:]}: {key} ({n}) | " + " | ".join(f"{report[c][group][key]['score']:.2f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"
