"""Folders m3 writes for others to serve (``m3 export``, ``m3 compress``): every file readable by the serving user
(0644, though safetensors writes 0600), a fresh manifest that ``m3 serve`` accepts, and ``--int8`` without torchao
refused instead of a build without int8."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from app import main as m3
from experts.manifest import verify_manifest
from vlm.compress.build_files import FILE_MODE, finish_model_folder

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "vlm" / "weights" / "default"


def _modes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def _serve_accepts(folder: Path) -> object:
    """What ``m3 serve`` does with ``models.model_dir``: manifest checked, model loaded, else ConfigError."""
    from app.config import AppConfig, ModelsConfig
    from app.server import load_backend

    return load_backend(AppConfig(models=ModelsConfig(model_dir=folder, device="cpu"))).backend


def test_safetensors_written_0600_become_0644_and_the_folder_is_signed(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "build"
    (folder / "llm").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "llm" / "model.safetensors"))
    assert stat.S_IMODE((folder / "llm" / "model.safetensors").stat().st_mode) == 0o600  # what safetensors does
    (folder / "config.json").write_text("{}")
    manifest = finish_model_folder(folder)
    assert set(_modes(folder).values()) == {FILE_MODE}
    assert set(json.loads(manifest.read_text())["files"]) == {"llm/model.safetensors", "config.json"}
    verify_manifest(folder)


def test_m3_compress_output_is_readable_by_all_and_accepted_by_m3_serve(tmp_path, capsys):
    data = tmp_path / "site.txt"
    data.write_text("\n".join(f"No focal lesion in the liver; the spleen measures {100 + i} mm." for i in range(40)))
    out = tmp_path / "pruned"
    rc = m3.main(["compress", "oneshot", "--method", "magnitude", "--model", str(DEFAULT_MODEL), "--data", str(data),
                  "--out", str(out), "--seq-len", "16", "--max-samples", "16"])
    assert rc == 0, capsys.readouterr().err
    modes = _modes(out)
    assert "llm/model.safetensors" in modes and "llm/masks_2to4.safetensors" in modes
    assert set(modes.values()) == {FILE_MODE}, {k: oct(v) for k, v in modes.items() if v != FILE_MODE}
    listed = json.loads((out / "manifest.json").read_text())["files"]
    source = json.loads((DEFAULT_MODEL / "manifest.json").read_text())["files"]
    assert "llm/compress.json" in listed and listed["llm/model.safetensors"] != source["llm/model.safetensors"]
    backend = _serve_accepts(out)
    assert backend is not None and backend.info.name == "pruned"


def test_m3_export_build_files_are_0644_and_the_build_serves(tmp_path, capsys):
    out = tmp_path / "build"
    assert m3.main(["export", "--model", str(DEFAULT_MODEL), "--out", str(out), "--dtype", "float32", "--no-measure"]) == 0, \
        capsys.readouterr().err
    modes = _modes(out)
    assert {"llm/model.safetensors", "mm_projector/model.safetensors", "vision_tower/model.safetensors"} <= set(modes)
    assert set(modes.values()) == {FILE_MODE}, {k: oct(v) for k, v in modes.items() if v != FILE_MODE}
    assert _serve_accepts(out) is not None


def test_m3_export_int8_without_torchao_exits_non_zero_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao...` raises ImportError, installed or not
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    out = tmp_path / "int8"
    rc = m3.main(["export", "--model", str(DEFAULT_MODEL), "--out", str(out), "--int8", "--no-measure"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "m3: error: int8 export" in err and "torchao" in err and "m3[gpu]" in err
    assert not out.exists()
