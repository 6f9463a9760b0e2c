"""Strict settings (a misspelt key or M3_* variable stops the start, naming the closest valid one) and the probes a
container platform or a reverse proxy calls: /livez, /readyz, /healthz, also under a URL prefix, never showing
install paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import AppConfig, ConfigError, load_config
from app.health import check_url, create_health_app, default_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the scripted backend and free ports

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("env", "message"), [
    ({"M3_SERVER_PROT": "8080"}, r"\$M3_SERVER_PROT is no m3 setting \(did you mean \$M3_SERVER_PORT\?\)"),
    ({"M3_MODELS_EXPERT_DIR": "/models/experts"}, r"did you mean \$M3_MODELS_EXPERTS_DIR\?"),
    ({"M3_PACS_PASSWORT": "x"}, r"did you mean \$M3_PACS_PASSWORD\?"),
    ({"M3_TOTALLY_UNRELATED": "1"}, r"\$M3_TOTALLY_UNRELATED is no m3 setting; expected one of"),
])
def test_an_unknown_m3_variable_refuses_start_naming_the_closest_one(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nprot = 1\n", r"unknown setting server\.prot \(did you mean server\.port\?\)"),
    ("[sever]\nport = 1\n", r"unknown section \[sever\] \(did you mean server\?\)"),
    ("[auth]\nidle_logout_mins = 5\n", r"did you mean auth\.idle_logout_min\?"),
])
def test_an_unknown_key_in_the_file_refuses_start_naming_the_closest_one(tmp_path, text, message):
    path = tmp_path / "m3.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_the_variables_that_are_no_setting_are_still_accepted(tmp_path):
    config = load_config(env={"M3_USERS": "", "M3_CONFIG": str(ROOT / "docs" / "m3.toml"), "M3_PACS_PASSWORD": "s",
                              "M3_LM_API_KEY": "k", "OTHER_TOOL_VAR": "x"})
    assert config.pacs.password == "s" and config.models.lm_api_key == "k"


def test_m3_serve_refuses_to_start_with_a_misspelt_variable(monkeypatch, capsys):
    from app.main import main

    monkeypatch.setenv("M3_SERVER_HOTS", "0.0.0.0")
    assert main(["serve"]) == 1
    assert "did you mean $M3_SERVER_HOST?" in capsys.readouterr().err


def test_livez_readyz_and_healthz_answer_without_paths(tmp_path):
    models = tmp_path / "secret-install-location"
    models.mkdir()
    config = AppConfig()
    config.models.experts_dir = models
    config.audit.log_path = tmp_path / "audit" / "audit.jsonl"
    client = TestClient(create_health_app(config.validate()))
    assert client.get("/livez").json()["status"] == "alive"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["audit_log"] == {"ok": True, "detail": "writable"}
    for path in ("/livez", "/readyz", "/healthz"):
        assert str(tmp_path) not in client.get(path).text


def test_readyz_fails_while_the_audit_log_cannot_be_written_and_livez_still_answers(tmp_path):
    blocker = tmp_path / "var"
    blocker.write_text("a file where the audit folder should be")
    config = AppConfig()
    config.audit.log_path = blocker / "audit.jsonl"
    client = TestClient(create_health_app(config))
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["status"] == "not ready"
    assert not_ready.json()["checks"]["audit_log"]["detail"].startswith("audit.log_path is not writable")
    assert client.get("/healthz").status_code == 503
    assert client.get("/livez").status_code == 200  # alive, only not ready


def test_the_served_app_answers_the_probes_under_its_url_prefix_without_login_and_the_healthcheck_passes(tmp_path):
    from localhost import free_port
    from scripted_backend import ScriptedBackend, ThresholdExpert

    from app.auth import hash_password
    from app.server import serve
    from experts.registry import ExpertRegistry

    registry = ExpertRegistry()
    registry.register("threshold_volume", ThresholdExpert, source="test")
    config = AppConfig()
    config.server.port = free_port()
    config.server.root_path = "/m3"
    config.audit.log_path = tmp_path / "audit.jsonl"
    config.auth.users_file = tmp_path / "users.toml"
    config.auth.users_file.write_text(f'[users]\nalice = "{hash_password("correct horse battery")}"\n')
    server = serve(config, backend=ScriptedBackend(), registry=registry, block=False)
    try:
        import httpx

        with httpx.Client(base_url=server.url, timeout=10) as http:
            for path in ("/m3/livez", "/m3/readyz", "/m3/healthz", "/healthz"):  # proxy keeping or stripping the prefix
                response = http.get(path)
                assert response.status_code == 200, (path, response.text)
                assert str(tmp_path) not in response.text
            ready = http.get("/m3/readyz").json()["checks"]
            assert set(ready) == {"audit_log", "chat_model", "experts"} and all(c["ok"] for c in ready.values())
            assert http.get("/m3/config").status_code == 401  # the rest still needs a login
        ok, body = check_url(default_url(config))  # what the container's HEALTHCHECK calls
        assert ok and json.loads(body)["checks"]["experts"]["detail"]["threshold_volume"]["source"] == "test"
        assert check_url(default_url(config, "ready"))[0] and check_url(default_url(config, "live"))[0]
    finally:
        server.close()


def test_docs_deploy_lists_every_setting_with_its_variable():
    from app.config import env_variable_names

    text = (ROOT / "docs" / "deploy.md").read_text()
    missing = [f"{key} / {var}" for key, var in env_variable_names().items() if f"| `{key}` | `{var}`" not in text]
    assert not missing, missing


def test_raw_uploads_are_kept_in_the_upload_cache_only_for_the_configured_seconds(tmp_path):
    from scripted_backend import ScriptedBackend, ThresholdExpert

    from app.server import build_app
    from experts.registry import ExpertRegistry

    registry = ExpertRegistry()
    registry.register("threshold_volume", ThresholdExpert)
    config = load_config(env={"M3_LIMITS_UPLOAD_CACHE_S": "120", "M3_AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl")})
    _, blocks, _ = build_app(config, backend=ScriptedBackend(), registry=registry)
    assert blocks.delete_cache == (30, 120)  # files older than 120 s removed, checked every 30 s
    assert AppConfig().limits.upload_cache_s == 300
    with pytest.raises(ConfigError, match="limits.upload_cache_s must be >= 60"):
        load_config(env={"M3_LIMITS_UPLOAD_CACHE_S": "5"})


def test_m3_demo_stays_on_this_machine_even_with_the_images_config_but_keeps_its_experts_setting(monkeypatch, tmp_path):
    import app.server
    from app.main import main

    started = []
    monkeypatch.setattr(app.server, "serve", lambda config, **_: started.append(config))
    monkeypatch.setenv("M3_CONFIG", str(ROOT / "docs" / "m3.toml"))  # host = "0.0.0.0", as in the image
    monkeypatch.setenv("M3_MODELS_EXPERTS_DIR", str(tmp_path))
    monkeypatch.delenv("M3_USERS", raising=False)
    assert main(["demo", "--port", "7999"]) == 0
    assert main(["demo", "--host", "0.0.0.0"]) == 0
    assert [c.server.host for c in started] == ["127.0.0.1", "0.0.0.0"] and started[0].server.port == 7999
    assert started[0].models.experts_dir == tmp_path
