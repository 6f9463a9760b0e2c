"""One elastic training run into a model folder: what ``m3 compress flextron`` does once it has loaded a model
and its data. A finished folder with the same settings is left alone; one with other settings is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from vlm.compress.build_files import finish_model_folder
from vlm.compress.calibration import CalibData, mean_loss
from vlm.compress.elastic.deploy import FLEXTRON_FILENAME, save_elastic
from vlm.compress.elastic.distill import CHECKPOINTS, DistillConfig, DistillResult, train_elastic
from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.widths import ElasticSpace, count_params, plan_applied
from vlm.compress.targets import resolve_lm

__all__ = ["run_flextron", "width_table"]


def run_flextron(src_root: str | Path, lm: nn.Module, tokenizer, data: CalibData, out: str | Path, config: DistillConfig, *,
                 resume: bool = False, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train ``lm`` (the LM of the model folder ``src_root``) by elastic distillation on ``data`` and write the
    elastic model folder ``out``; returns its ``flextron.json`` record (``status`` says what this call did)."""
    out = Path(out)
    for done in (out / "llm" / FLEXTRON_FILENAME, out / FLEXTRON_FILENAME):
        if done.is_file():
            saved = json.loads(done.read_text())
            if saved.get("config") == config.to_dict():
                return {**saved, "status": "already finished (skipped)"}
            raise ElasticError(f"{out} already holds an elastic model trained with other settings ({saved.get('config')}); "
                               "choose another --out folder.")
    if out.exists() and any(p.name != CHECKPOINTS for p in out.iterdir()):
        raise ElasticError(f"Output folder {out} holds files of something else; choose a new folder.")
    result = train_elastic(lm, data, out, config, resume=resume, stop_after=stop_after, progress=progress)
    if result.step < config.steps:
        return {"status": result.status, "steps_done": result.step, "config": config.to_dict()}
    record = {"method": "flextron", "config": config.to_dict(), "status": result.status, "steps_done": result.step,
              "seconds": round(result.seconds, 1), "space": result.space.to_dict(), "ordering": result.ordering.to_dict(),
              "widths": width_table(lm, result.space, data), "history": result.history}
    save_elastic(src_root, lm, tokenizer, out, record)
    _loss_plot(result, out / "flextron_loss.png")
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    finish_model_folder(out)
    return record


@torch.no_grad()
def width_table(model: nn.Module, space: ElasticSpace, data: CalibData, max_rows: int = 64) -> list[dict]:
    """Parameters and loss (nats / token, on up to ``max_rows`` rows of ``data``) of each uniform width whose head
    and MLP fractions are the nearest to one another (25 %, 50 %, 75 %, 100 % …)."""
    lm = resolve_lm(model)
    rows = data[:max_rows] if isinstance(data, torch.Tensor) else data[: max(1, max_rows // 8)]
    table = []
    for h in space.head_levels:
        m = min(space.mlp_levels, key=lambda v: abs(v / space.intermediate - h / space.num_heads))
        plan = space.uniform(h, m)
        with plan_applied(lm, plan, space):
            table.append({"heads": h, "mlp": m, "params": count_params(lm, plan, space), "loss": mean_loss(lm, rows)})
    return table


def _loss_plot(result: DistillResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in result.history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, name in ((1, "full width"), (2, "smallest width"), (3, "random widths")):
        ax.plot(steps, [h[k] for h in result.history], lw=0.8, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("KL + task loss (nats / token)")
    ax.set_title("m3 compress flextron")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
