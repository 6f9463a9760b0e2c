"""Settings from file + environment, and the /healthz endpoint the container's HEALTHCHECK calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import ConfigError, env_variable_names, load_config
from app.health import check_url, create_health_app, default_url, mount_health

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m3.toml"
    path.write_text(text)
    return path


def test_file_then_environment_wins(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    path = write(tmp_path, f'[server]\nport = 8000\n[models]\nmodel_dir = "{models}"\n[pacs]\nurl = "http://pacs:8042/dicom-web"\n'
                            'username = "m3"\n')
    config = load_config(path, env={"M3_SERVER_PORT": "9000", "M3_PACS_WRITEBACK_ENABLED": "yes", "M3_PACS_PASSWORD": "s3cret"})
    assert config.server.port == 9000 and config.models.model_dir == models
    assert config.pacs.writeback_enabled is True and config.pacs.password == "s3cret"
    assert "s3cret" not in repr(config)
    assert config.source == f"{path} + env"
    assert load_config(env={}).server.host == "127.0.0.1"  # no file, no env: loopback defaults


def test_config_file_from_env_and_container_default():
    container = load_config(env={"M3_CONFIG": str(ROOT / "docs" / "m3.toml")})
    assert container.server.host == "0.0.0.0" and not container.auth.configured
    assert container.pacs.outbox_dir == Path("/var/lib/m3/outbox") and not container.pacs.writeback_enabled


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[server]\nprot = 1\n", {}, r"unknown setting server\.prot"),
        ("[pacs]\npassword = 'x'\n", {}, r"M3_PACS_PASSWORD"),
        ("[limits]\nmax_files = 'many'\n", {}, r"limits\.max_files must be an integer"),
        ("", {"M3_PACS_WRITEBACK_ENABLED": "maybe"}, r"M3_PACS_WRITEBACK_ENABLED must be true/false"),
        ("[pacs]\nwriteback_enabled = true\n", {}, r"pacs\.url is empty"),
        ("[pacs]\nurl = 'ftp://pacs'\n", {}, r"pacs\.url must be an http"),
        ("[models]\nmodel_dir = '/nonexistent/m3'\n", {}, r"models\.model_dir must be an existing folder"),
        ("[server\n", {}, r"not valid TOML"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path, text, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env=env)


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found; mount it"):
        load_config(env={"M3_CONFIG": str(tmp_path / "absent.toml")})


def test_every_setting_has_an_env_name():
    names = env_variable_names()
    assert names["pacs.writeback_enabled"] == "M3_PACS_WRITEBACK_ENABLED" and names["server.port"] == "M3_SERVER_PORT"
    assert len(set(names.values())) == len(names)


def test_healthz_mounts_on_any_fastapi_app(tmp_path):
    config = load_config(env={"M3_AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl")})
    app = FastAPI()
    mount_health(app, config, extra_checks={"vlm": lambda: (True, "loaded")})
    ok = TestClient(app).get("/healthz")
    assert ok.status_code == 200 and ok.json()["status"] == "ok" and ok.json()["checks"]["vlm"]["detail"] == "loaded"
    sick = create_health_app(config, extra_checks={"vlm": lambda: (False, "weights checksum mismatch")})
    bad = TestClient(sick).get("/healthz")
    assert bad.status_code == 503 and bad.json()["checks"]["vlm"] == {"ok": False, "detail": "weights checksum mismatch"}


def test_unreadable_model_folder_is_unhealthy(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    config = load_config(env={"M3_MODELS_MODEL_DIR": str(models), "M3_AUDIT_LOG_PATH": str(tmp_path / "a.jsonl")})
    models.rmdir()  # the volume went away after start
    body = TestClient(create_health_app(config)).get("/healthz")
    assert body.status_code == 503 and "not a readable folder" in body.json()["checks"]["model_dir"]["detail"]


def test_check_command_exit_codes(tmp_path):
    config = load_config(env={"M3_SERVER_PORT": "1", "M3_SERVER_ROOT_PATH": "/m3/"})
    assert default_url(config) == "http://127.0.0.1:1/m3/healthz"
    ok, detail = check_url("http://127.0.0.1:1/healthz", timeout_s=2)
    assert not ok and "no answer" in detail
    result = subprocess.run([sys.executable, "-m", "app.health", "--url", "http://127.0.0.1:1/healthz", "--timeout", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_remote_lm_settings_need_a_model_name_and_keep_the_key_out_of_files(tmp_path):
    config = load_config(write(tmp_path, '[models]\nlm_url = "http://gpu-node:8000/v1"\nlm_model = "m3-8b"\n'),
                         env={"M3_LM_API_KEY": "k"})
    assert (config.models.lm_url, config.models.lm_model, config.models.lm_api_key) == ("http://gpu-node:8000/v1", "m3-8b", "k")
    with pytest.raises(ConfigError, match="lm_model naming the served model"):
        load_config(write(tmp_path, '[models]\nlm_url = "http://gpu-node:8000/v1"\n'), env={})
    with pytest.raises(ConfigError, match="M3_LM_API_KEY"):
        load_config(write(tmp_path, '[models]\nlm_api_key = "k"\n'), env={})
