"""The app with ``models.lm_url``: the language model answers from a remote m3 serve-lm while the expert, the
grounding and the audit log stay in the app. The remote model is the scripted stand-in (conftest) behind the real
serve-lm; it has no experts, so a measured volume in the answer can only come from the app's own expert run."""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn
from gradio_client import Client, handle_file
from localhost import free_port

PASSWORD = "correct horse battery"


@pytest.fixture
def lm_server(scripted_module):
    """m3 serve-lm over the scripted backend on a free port, with an API key: (url, backend)."""
    from vlm.lm_server import create_app

    backend = scripted_module.ScriptedBackend()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend, model_name="m3-remote", api_key="lm-key"), host="127.0.0.1",
                                           port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "m3 serve-lm did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", backend
    server.should_exit = True


def _config(tmp_path, url: str, model: str = "m3-remote", key: str = "lm-key"):
    from app.auth import hash_password
    from app.config import AppConfig

    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    users = tmp_path / "users.toml"
    users.write_text(f'[users]\nalice = "{hash_password(PASSWORD)}"\n')
    cfg.auth.users_file = users
    cfg.models.lm_url, cfg.models.lm_model, cfg.models.lm_api_key = url, model, key
    return cfg


def test_the_app_answers_through_a_remote_serve_lm_with_the_expert_run_in_the_app(tmp_path, ct_zip, lm_server, scripted_module):
    from app.server import serve
    from experts.registry import ExpertRegistry

    url, remote_model = lm_server
    registry = ExpertRegistry()
    registry.register("threshold_volume", scripted_module.ThresholdExpert)
    cfg = _config(tmp_path, url)
    server = serve(cfg, registry=registry, block=False)  # no backend given: models.lm_url chooses the remote one
    try:
        client = Client(server.url, auth=("alice", PASSWORD), verbose=False)
        client.predict([handle_file(str(ct_zip))], api_name="/upload")
        chat, *_ = client.predict("What is the dense tissue volume?", api_name="/ask")
    finally:
        server.close()
    steps = [m for m in chat if (m.get("metadata") or {}).get("title")]
    assert steps and "threshold_volume" in steps[0]["metadata"]["title"] and steps[0]["metadata"]["status"] == "done"
    answer = _text(chat[-1])
    volume = _text(steps[0]).split("dense tissue volume: ")[1].split(" mL")[0]
    assert f"dense tissue volume: {volume} mL" in answer  # the scripted model quotes what the app's expert sent it
    assert remote_model.calls == 2  # the call, then the answer to the result
    entry = [json.loads(line) for line in cfg.audit.log_path.read_text().splitlines() if '"answer"' in line][-1]
    assert entry["event"] == "answer" and entry["model"] == "m3-remote" and entry["model_version"] == f"remote {url}"
    assert entry["tool_calls"][0]["name"] == "threshold_volume" and volume in entry["answer"]


def test_a_remote_lm_that_refuses_the_key_or_lacks_the_model_refuses_the_start(tmp_path, lm_server):
    from app.config import ConfigError
    from app.server import load_backend

    url, _ = lm_server
    status = load_backend(_config(tmp_path, url))
    assert status.backend.info.remote and status.backend.info.name == "m3-remote" and status.source == url
    with pytest.raises(ConfigError, match="does not serve the model 'm3-8b'; it serves 'm3-remote'"):
        load_backend(_config(tmp_path, url, model="m3-8b"))
    with pytest.raises(ConfigError, match="answered 401"):
        load_backend(_config(tmp_path, url, key="wrong"))
    later = load_backend(_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1"))  # not up yet: the app starts anyway
    assert later.backend is not None and later.backend.info.remote


def _text(message) -> str:
    content = message["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if isinstance(p, dict))


def test_health_checks_the_remote_language_model_where_it_runs(tmp_path, lm_server):
    from app.server import _chat_health, load_backend

    url, _ = lm_server
    ok, detail = _chat_health(load_backend(_config(tmp_path, url)))
    assert ok and "m3-remote" in detail
    down = load_backend(_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1"))  # started while the LM server was down
    ok, detail = _chat_health(down)
    assert not ok and "unreachable" in detail
