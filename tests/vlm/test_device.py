"""``--device`` / ``--dtype`` and ``models.device`` / ``models.dtype``: one resolution (``vlm.device``) for every
command that loads a model, weights read straight into the asked precision, a clear refusal for a GPU that is not
there."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

from vlm.device import DeviceError, Placement, from_pretrained_kwargs, resolve_device

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "vlm" / "weights" / "default"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_cpu_float32_without_a_gpu_and_cuda_bfloat16_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == Placement(torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "bf16") == Placement(torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device("auto", "auto") == Placement(torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_device("cuda").dtype == torch.float16
    assert resolve_device("cpu").dtype == torch.float32  # "auto" precision follows the device asked for


def test_auto_resolves_to_cpu_float32_on_this_machine():
    if torch.cuda.is_available():  # the same test run on a GPU host: auto must take the GPU
        assert resolve_device() == Placement(torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    else:
        assert resolve_device() == Placement(torch.device("cpu"), torch.float32)


def test_a_gpu_asked_for_on_a_machine_without_one_is_refused_with_what_to_do(no_cuda):
    with pytest.raises(DeviceError, match=r"'cuda' \(--device / models.device\) needs a CUDA GPU.*Use --device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        resolve_device("cuda:0", "bfloat16")


def test_a_gpu_index_beyond_the_machines_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"one of the 2 GPU\(s\).*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_unknown_device_and_dtype_names_are_refused_naming_the_choices():
    with pytest.raises(DeviceError, match=r"device .* must be one of auto, cpu, cuda or cuda:N .*got 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match=r"dtype .* must be one of auto, float32, bfloat16, float16, got 'int4'"):
        resolve_device("cpu", "int4")


def test_large_checkpoints_load_through_accelerate_device_map_on_cuda_only():
    assert "device_map" not in from_pretrained_kwargs(Placement(torch.device("cpu"), torch.float32))
    on_gpu = from_pretrained_kwargs(Placement(torch.device("cuda"), torch.bfloat16))
    assert on_gpu["device_map"] == "auto" and on_gpu["dtype"] == torch.bfloat16 and on_gpu["low_cpu_mem_usage"] is True
    assert from_pretrained_kwargs(Placement(torch.device("cuda:1"), torch.float16))["device_map"] == {"": "cuda:1"}


def test_every_model_command_takes_device_and_dtype():
    from app.main import build_parser

    parser = build_parser()
    argv = {"serve": [], "demo": [], "chat": ["study", "q"], "ask": ["study", "--questions", "q.jsonl", "--out", "a.jsonl"],
            "eval": ["--model", "m", "--data", "d"], "serve-lm": ["m"]}
    for command, rest in argv.items():
        args = parser.parse_args([command, "--device", "cuda:1", "--dtype", "bfloat16", *rest])
        assert (args.device, args.dtype) == ("cuda:1", "bfloat16"), command
        default = parser.parse_args([command, *rest])
        # serve / demo leave them unset so the config's models.device / models.dtype apply; the others default to auto
        assert (default.device, default.dtype) == ((None, None) if command in ("serve", "demo") else ("auto", "auto")), command
    with pytest.raises(SystemExit):
        parser.parse_args(["chat", "--dtype", "int4", "study", "q"])


def test_config_models_device_and_dtype_are_read_and_checked():
    from app.config import ConfigError, load_config

    config = load_config(env={"M3_MODELS_DEVICE": "cuda:1", "M3_MODELS_DTYPE": "bfloat16"})
    assert (config.models.device, config.models.dtype) == ("cuda:1", "bfloat16")
    assert (load_config(env={}).models.device, load_config(env={}).models.dtype) == ("auto", "auto")
    with pytest.raises(ConfigError, match=r"dtype .*got 'int4' \(from env\)"):
        load_config(env={"M3_MODELS_DTYPE": "int4"})


def test_m3_chat_with_device_cuda_on_a_machine_without_one_exits_non_zero_with_the_reason():
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3_")} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "app.main", "chat", "--device", "cuda", "no-such-study", "Any lesion?"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "m3: error: device 'cuda' (--device / models.device) needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_m3_serve_with_device_cuda_on_a_machine_without_one_refuses_to_start(no_cuda, monkeypatch, capsys):
    from app import main as m3

    for var in [v for v in os.environ if v.startswith("M3_")]:
        monkeypatch.delenv(var)
    assert m3.main(["serve", "--device", "cuda", "--port", "7999"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bfloat16_on_cpu_loads_the_default_model_in_bfloat16_and_answers_one_chat_turn(monkeypatch):
    import data
    import vlm.backends
    from data.phantoms.ct import generate_ct
    from data.study import Series, Study
    from vlm import cli

    loaded = []
    real_load = vlm.backends.load_backend
    monkeypatch.setattr(vlm.backends, "load_backend", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    ct, _, _ = generate_ct(0)
    monkeypatch.setattr(data, "load_study", lambda path: Study(uid="1.2.3", series=[Series("4.5", "CT", "Axial", ct)]), raising=False)
    out = io.StringIO()
    turn = cli.chat(None, "study-folder", "What is the liver volume?", max_new_tokens=48, out=out, device="cpu", dtype="bfloat16")
    model = loaded[0].model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.llm.device.type == "cpu"
    calls = [c for c in turn.tool_calls if c.name == "ct_segmentation" and c.result is not None]
    assert turn.rounds >= 1 and calls, turn.tool_calls
    assert "liver volume" in turn.answer.lower() and "mL" in turn.answer and "mL" in out.getvalue()


def test_the_server_loads_its_model_in_the_configured_precision():
    from app.config import AppConfig, ModelsConfig
    from app.server import load_backend

    status = load_backend(AppConfig(models=ModelsConfig(model_dir=DEFAULT_MODEL, device="cpu", dtype="bfloat16")))
    assert {p.dtype for p in status.backend.model.parameters()} == {torch.bfloat16}


class _Float32Copies(TorchDispatchMode):
    """Records every real (not meta) float32 tensor of at least ``min_numel`` elements an operation makes."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel, self.seen = min_numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type != "meta" and t.numel() >= self.min_numel:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.fixture(scope="module")
def bf16_vila_dir(tmp_path_factory, make):
    """A VILA-layout checkpoint stored in bf16, as the published VILA-M3 ones are."""
    from vlm.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("vila_bf16") / "VILA-M3-tiny"
    tok = train_tokenizer(make.corpus, None, TokenizerConfig(vocab_size=500))
    make.llama(len(tok), seed=5).to(torch.bfloat16).save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    make.siglip(seed=6).to(torch.bfloat16).save_pretrained(root / "vision_tower")
    gen = torch.Generator().manual_seed(7)
    proj = {"layers.1.weight": torch.ones(128), "layers.1.bias": torch.zeros(128), "layers.2.weight": 0.1 * torch.randn(64, 128, generator=gen),
            "layers.2.bias": torch.zeros(64), "layers.4.weight": 0.1 * torch.randn(64, 64, generator=gen), "layers.4.bias": torch.zeros(64)}
    (root / "mm_projector").mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in proj.items()}, str(root / "mm_projector" / "model.safetensors"))
    (root / "mm_projector" / "config.json").write_text(json.dumps({"mm_projector_type": "mlp_downsample"}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "mm_vision_select_layer": -2,
        "mm_projector_cfg": {"mm_projector_type": "mlp_downsample"}, "image_aspect_ratio": "resize", "conv_mode": "vicuna_v1"}))
    return root


def test_a_bf16_vila_checkpoint_loads_in_bf16_without_a_float32_copy(bf16_vila_dir):
    from vlm.model import load_model

    with _Float32Copies(min_numel=64 * 64) as float32:  # the smallest weight matrix of the tiny checkpoint
        model = load_model(bf16_vila_dir, dtype="bfloat16")
    assert float32.seen == []
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    stored = load_file(str(bf16_vila_dir / "mm_projector" / "model.safetensors"))
    assert torch.equal(model.mm_projector.state_dict()["layers.2.weight"], stored["layers.2.weight"])
    # float32 pixels from preprocess are moved to the model's dtype on the way in
    image = np.random.default_rng(0).integers(0, 256, size=(80, 80), dtype=np.uint8)
    pixels = model.vision_tower.preprocess([image])
    assert pixels.dtype == torch.float32
    with torch.no_grad():
        feats = model.encode_images(pixels)
    assert feats.dtype == torch.bfloat16 and feats.shape == (1, model.tokens_per_image, 64)
    reference = load_model(bf16_vila_dir)  # float32, the default on CPU
    with torch.no_grad():
        assert torch.allclose(feats.float(), reference.encode_images(pixels), atol=0.05, rtol=0.05)
