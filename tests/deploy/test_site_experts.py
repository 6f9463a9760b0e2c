"""A site's experts folder is what the app, `/healthz`, the audit log and the `m3` commands use: a copy of a
shipped expert re-versioned and re-signed as a site would, served instead of the embedded one."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import data
from app.config import AppConfig, load_config
from experts import registry as registry_module
from experts.base import ExpertError
from experts.manifest import write_manifest
from experts.model_files import WEIGHTS_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the scripted stand-in backend

SITE_VERSION = "cxr_classification-site-2025.1"


def make_site_folder(root: Path, version: str = SITE_VERSION) -> Path:
    """``root/cxr_classification``: the shipped CXR expert with a new version in its config and card, re-signed."""
    folder = root / "cxr_classification"
    shutil.copytree(WEIGHTS_DIR / "cxr_classification", folder)
    config = json.loads((folder / "config.json").read_text())
    old = config["version"]
    config["version"] = version
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = folder / "model_card.md"
    card.write_text(card.read_text().replace(old, version))
    write_manifest(folder)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_site_folder(tmp_path_factory.mktemp("site") / "experts")


@pytest.fixture(autouse=True)
def restore_default_registry(monkeypatch):
    monkeypatch.setattr(registry_module, "_DEFAULT", None)


def app_config(tmp_path: Path, **models) -> AppConfig:
    config = AppConfig()
    config.audit.log_path = tmp_path / "audit.jsonl"
    for key, value in models.items():
        setattr(config.models, key, value)
    return config.validate()


def cxr_volume():
    case = data.phantoms.generate("cxr", 30_004, findings=("pleural effusion",), random_others=False)
    return case.volumes["DX"]


def test_the_app_serves_the_site_experts_and_names_their_version_in_healthz_the_page_and_the_audit_log(tmp_path, site):
    from scripted_backend import ScriptedBackend

    from app.server import build_app, experts_registry

    config = app_config(tmp_path, experts_dir=site)
    api, blocks, _ = build_app(config, backend=ScriptedBackend())
    health = TestClient(api).get("/healthz").json()
    experts = health["checks"]["experts"]
    assert experts["ok"] and experts["detail"] == {"cxr_classification": {"version": SITE_VERSION, "source": "site folder"}}
    assert str(site) not in json.dumps(health)  # no install path without login
    assert SITE_VERSION in json.dumps(blocks.config, default=str)  # the page's banner names it
    start = [e for e in json.loads("[" + ",".join(config.audit.log_path.read_text().splitlines()) + "]")
             if e["event"] == "service_start"][-1]
    assert start["models"]["experts"] == {"cxr_classification": SITE_VERSION}
    result = experts_registry(config).run("cxr_classification", cxr_volume())
    assert result.version == SITE_VERSION and result.to_json()["version"] == SITE_VERSION


def test_a_site_folder_without_an_expert_does_not_fall_back_to_the_embedded_one_unless_asked(site):
    alone = registry_module.registry_for(site)
    assert alone.names() == ["cxr_classification"]
    with pytest.raises(ExpertError, match="unknown expert 'ct_segmentation'"):
        alone.get("ct_segmentation")
    both = registry_module.registry_for(site, embedded_fallback=True)
    assert both.sources == {"ct_segmentation": "embedded bundle", "mri_brain_tumor": "embedded bundle",
                            "cxr_classification": "site folder"}


def test_an_export_carries_its_experts_and_serving_it_uses_them(tmp_path, site):
    from app.server import experts_registry

    export = tmp_path / "build"
    shutil.copytree(site, export / "experts")
    config = app_config(tmp_path, model_dir=export)
    assert config.experts_source() == (export / "experts", "export")
    assert experts_registry(config).describe() == {"cxr_classification": {"version": SITE_VERSION, "source": "export"}}
    # an experts folder set explicitly wins over the export's
    other = make_site_folder(tmp_path / "other", "cxr_classification-other-1")
    config = app_config(tmp_path, model_dir=export, experts_dir=other)
    assert experts_registry(config).describe()["cxr_classification"]["version"] == "cxr_classification-other-1"


def test_a_site_expert_changed_after_signing_refuses_the_start(tmp_path, site):
    from scripted_backend import ScriptedBackend

    from app.server import build_app

    tampered = tmp_path / "experts"
    shutil.copytree(site, tampered)
    card = tampered / "cxr_classification" / "model_card.md"
    card.write_text(card.read_text() + "\nValidated for clinical use.\n")
    with pytest.raises(ExpertError, match="does not match its manifest.*changed model_card.md"):
        build_app(app_config(tmp_path, experts_dir=tampered), backend=ScriptedBackend())


@pytest.mark.parametrize("layout", ["unknown", "empty"])
def test_a_folder_that_holds_no_known_expert_is_refused_naming_what_it_should_hold(tmp_path, layout):
    folder = tmp_path / "experts"
    folder.mkdir()
    if layout == "unknown":
        (folder / "liver_ai").mkdir()
        (folder / "liver_ai" / "config.json").write_text("{}")
    with pytest.raises(ExpertError, match="ct_segmentation/, mri_brain_tumor/, cxr_classification/"):
        registry_module.registry_for(folder)


def test_m3_experts_list_and_run_take_the_folder_from_the_flag_or_the_setting(tmp_path, site, monkeypatch, capsys):
    from app.main import main
    from data.phantoms import write_study

    monkeypatch.delenv("M3_CONFIG", raising=False)
    assert main(["experts", "list", "--experts-dir", str(site)]) == 0
    listed = capsys.readouterr().out
    assert f"cxr_classification  [DX, CR]  {SITE_VERSION}  (site folder)" in listed.replace("[CR, DX]", "[DX, CR]")
    assert "ct_segmentation" not in listed

    monkeypatch.setenv("M3_MODELS_EXPERTS_DIR", str(site))
    study = write_study(data.phantoms.generate("cxr", 30_004, findings=("pleural effusion",), random_others=False),
                        tmp_path / "study")
    assert main(["experts", "run", "cxr_classification", str(study), "--out", str(tmp_path / "out")]) == 0
    assert f"expert: cxr_classification {SITE_VERSION} (site folder)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "findings.json").read_text())["version"] == SITE_VERSION


def test_chat_ask_and_eval_get_the_configured_experts_through_the_default_registry(tmp_path, site, monkeypatch):
    from app.main import EXPERT_COMMANDS, use_configured_experts

    assert {"chat", "ask", "eval", "experts"} <= EXPERT_COMMANDS
    monkeypatch.delenv("M3_CONFIG", raising=False)
    monkeypatch.delenv("M3_MODELS_EXPERTS_DIR", raising=False)
    use_configured_experts()
    assert registry_module.default_registry().sources["ct_segmentation"] == "embedded bundle"
    config_file = tmp_path / "m3.toml"
    config_file.write_text(f'[models]\nexperts_dir = "{site}"\n')
    monkeypatch.setenv("M3_CONFIG", str(config_file))
    use_configured_experts()
    assert registry_module.default_registry().describe()["cxr_classification"]["version"] == SITE_VERSION
    # `m3 chat --model EXPORT` without an experts folder set: the export's experts
    monkeypatch.delenv("M3_CONFIG")
    export = tmp_path / "build"
    shutil.copytree(site, export / "experts")
    use_configured_experts(str(export))
    assert registry_module.default_registry().sources == {"cxr_classification": "export"}


def test_the_setting_is_read_from_the_environment(site):
    config = load_config(env={"M3_MODELS_EXPERTS_DIR": str(site), "M3_MODELS_EMBEDDED_EXPERTS_FALLBACK": "yes"})
    assert config.experts_source() == (site, "site folder") and config.models.embedded_experts_fallback
