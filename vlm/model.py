"""The m3 vision-language model: vision tower → projector → any Hugging Face causal LM.

Checkpoints use VILA's folder layout, so one loader reads m3's own checkpoints and published VILA /
VILA-M3 ones (``vlm.vila`` maps the latter's config)::

    model/
      config.json          M3Config (m3) or VILA's LlavaLlamaConfig (published)
      llm/                 a transformers causal LM + its tokenizer (safetensors, maybe sharded)
      vision_tower/        a SigLIP / CLIP vision model or the RADIO-style encoder
      mm_projector/        config.json + model.safetensors (``layers.1/2/4`` for mlp_downsample)

Images enter the LM through ``inputs_embeds``: each ``<image>`` placeholder in the prompt becomes
``tokens_per_image`` positions whose embeddings are the projected image features.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlm.device import from_pretrained_kwargs, resolve_device
from vlm.model_config import IMAGE_TOKEN, MODEL_TYPE, VILA_IMAGE_TOKEN_INDEX, M3Config, ModelLoadError
from vlm.projector import build_projector
from vlm.vila import config_from_vila
from vlm.vision_tower import VisionTower

__all__ = ["M3Config", "M3Model", "ModelLoadError", "load_model", "IMAGE_TOKEN", "VILA_IMAGE_TOKEN_INDEX"]

class M3Model(nn.Module):
    """Vision tower + projector + causal LM (+ the LM's tokenizer).

    ``forward(input_ids, pixel_values | image_features, ...)`` runs the LM on ``input_ids`` whose image
    positions (``config.image_token_index``, already expanded to ``tokens_per_image`` each) are filled
    with projected image features; it returns the LM's output (``logits``, ``loss``, cache).
    """

    def __init__(self, config: M3Config, vision_tower: VisionTower, projector: nn.Module, llm: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        config.vision_select_layer, config.vision_select_feature = vision_tower.select_layer, vision_tower.select_feature
        self.vision_tower = vision_tower
        self.mm_projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        if config.image_token_index is None:
            config.image_token_index = _image_token_id(tokenizer, config.image_token)
        self._tokens_per_image: int | None = None

    @property
    def image_token_index(self) -> int:
        return int(self.config.image_token_index)

    @property
    def tokens_per_image(self) -> int:
        """Number of LM positions one image takes (e.g. 196 for SigLIP 384/14 with mlp_downsample)."""
        if self._tokens_per_image is None:
            size = self.vision_tower.image_size
            dummy = torch.zeros(1, 3, size, size)
            with torch.no_grad():
                self._tokens_per_image = int(self.encode_images(dummy).shape[1])
        return self._tokens_per_image

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised pixels (any device, any float dtype) → ``(B, T, H)`` features in the LM's
        embedding space, on the device and in the dtype of the LM's input embeddings."""
        tower = next(self.vision_tower.parameters())
        feats = self.vision_tower(pixel_values.to(device=tower.device, dtype=tower.dtype))  # (B, N, C)
        proj = next(self.mm_projector.parameters())
        out = self.mm_projector(feats.to(device=proj.device, dtype=proj.dtype))  # (B, T, H)
        embeddings = self.llm.get_input_embeddings().weight
        return out.to(device=embeddings.device, dtype=embeddings.dtype)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L)`` ids with image positions → ``(B, L, H)`` embeddings; ``image_features`` is
        ``(n_images, T, H)`` in placeholder order (or ``(n_positions, H)``)."""
        mask = input_ids == self.image_token_index
        safe_ids = input_ids.masked_fill(mask, 0)
        embeds = self.llm.get_input_embeddings()(safe_ids)  # (B, L, H)
        n_pos = int(mask.sum())
        if n_pos == 0:
            return embeds
        if image_features is None:
            raise ModelLoadError(f"the prompt has {n_pos} image positions but no image features were given.")
        flat = image_features.reshape(-1, embeds.shape[-1])
        if flat.shape[0] != n_pos:
            raise ModelLoadError(
                f"image positions in the prompt must match the image features: {n_pos} positions, "
                f"{flat.shape[0]} feature vectors ({self.tokens_per_image} per image)."
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), flat.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **llm_kwargs: Any,
    ) -> Any:
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        embeds = self.embed(input_ids, image_features)
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.image_token_index, -100)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    def expand_image_tokens(self, ids: Sequence[int]) -> list[int]:
        """Each placeholder id in ``ids`` repeated ``tokens_per_image`` times."""
        out: list[int] = []
        for t in ids:
            out.extend([t] * self.tokens_per_image if t == self.image_token_index else [t])
        return out

    def save_pretrained(self, path: str | Path) -> None:
        """Write the VILA folder layout (config.json, llm/, vision_tower/, mm_projector/), safetensors."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = M3Config.from_dict(asdict(self.config))
        cfg.source_format = MODEL_TYPE
        (path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.llm.save_pretrained(path / "llm")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path / "llm")
        self.vision_tower.save_pretrained(path / "vision_tower")
        proj_dir = path / "mm_projector"
        proj_dir.mkdir(exist_ok=True)
        proj_cfg = {
            "architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
            "mm_projector_type": self.config.projector_type, "options": self.config.projector_options,
            "vision_hidden_size": self.vision_tower.hidden_size, "llm_hidden_size": _llm_hidden(self.llm.config),
        }
        (proj_dir / "config.json").write_text(json.dumps(proj_cfg, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.mm_projector.state_dict().items()}
        save_file(state, str(proj_dir / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "M3Model":
        return load_model(path, **kwargs)


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None) -> M3Model:
    """Load an m3 checkpoint or a published VILA / VILA-M3 checkpoint from a local folder.

    device: "auto", "cpu", "cuda", "cuda:N" (``vlm.device.resolve_device``; default CPU). dtype: "auto" (bf16 on a GPU,
    float32 on CPU), "float32", "bfloat16", "float16" or a ``torch.dtype`` (default "auto"). Every part is read
    straight into that dtype (a bf16 checkpoint loaded as bf16 makes no float32 copy); on CUDA the LM loads with
    accelerate's ``device_map`` and the vision tower and projector follow it onto the GPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    placement = resolve_device(device if device is not None else "cpu", dtype if dtype is not None else "auto")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"model folder {path} must hold config.json (VILA layout: config.json, llm/, vision_tower/, mm_projector/); none found.")
    raw = json.loads(cfg_path.read_text())
    for part in ("llm", "vision_tower", "mm_projector"):
        if not (path / part).is_dir():
            raise ModelLoadError(f"model folder {path} must hold a {part}/ folder (VILA layout); it is missing.")
    if raw.get("model_type") == "llava_llama" or "LlavaLlamaModel" in (raw.get("architectures") or []):
        config = config_from_vila(raw, path)
    elif raw.get("model_type") == MODEL_TYPE:
        config = M3Config.from_dict(raw)
    else:
        raise ModelLoadError(f"config.json model_type must be {MODEL_TYPE!r} or 'llava_llama', got {raw.get('model_type')!r}.")
    llm_kwargs = from_pretrained_kwargs(placement)
    llm = AutoModelForCausalLM.from_pretrained(path / "llm", **llm_kwargs).eval()
    if "device_map" not in llm_kwargs:
        llm = llm.to(placement.device)
    tokenizer = AutoTokenizer.from_pretrained(path / "llm")
    tower = VisionTower.from_pretrained(path / "vision_tower", select_layer=config.vision_select_layer,
                                        select_feature=config.vision_select_feature, dtype=placement.dtype)
    proj_dir = path / "mm_projector"
    proj_cfg = json.loads((proj_dir / "config.json").read_text()) if (proj_dir / "config.json").is_file() else {}
    config.projector_type = proj_cfg.get("mm_projector_type", config.projector_type)
    config.projector_options = proj_cfg.get("options", config.projector_options)
    with torch.device("meta"):  # no float32 parameters: the stored tensors become the parameters (assign=True)
        projector = build_projector(config.projector_type, tower.hidden_size, _llm_hidden(llm.config), **config.projector_options)
    weights = sorted(proj_dir.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(f"{proj_dir} must hold the projector weights as *.safetensors; none found.")
    state: dict[str, torch.Tensor] = {}
    for w in weights:
        state.update(load_file(str(w)))
    state = {k.removeprefix("mm_projector."): v for k, v in state.items()}
    missing, unexpected = projector.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(f"projector weights in {proj_dir} must match {config.projector_type}: missing {missing}, unexpected {unexpected}.")
    embeddings = llm.get_input_embeddings().weight  # the LM's first device (accelerate may spread it over several)
    projector = projector.to(device=embeddings.device, dtype=placement.dtype).eval()
    tower = tower.to(device=embeddings.device).eval()
    return M3Model(config, tower, projector, llm, tokenizer).eval()


def _llm_hidden(cfg: Any) -> int:
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.hidden_size)


def _image_token_id(tokenizer: Any, token: str) -> int:
    if tokenizer is None:
        return VILA_IMAGE_TOKEN_INDEX
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        return VILA_IMAGE_TOKEN_INDEX  # no <image> token (VILA's tokenizers): a sentinel id instead
    return int(tid)
