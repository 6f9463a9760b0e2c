"""The container's real start step (the Dockerfile's ENTRYPOINT + CMD, ``m3 serve --host 0.0.0.0``) and the
model manifest check that runs before any weights load.

Fast variant: the command from this checkout in a subprocess, configured as ``docker run -e ...`` would.
Slow variant: the same command from the package installed by the Dockerfile's RUN steps in a fresh venv.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from localhost import free_port, stop_process

from app.auth import hash_password
from app.config import AppConfig, ConfigError

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
LOCAL_INDEX = "file:///opt/pypi/simple"  # this machine's wheel index (as in test_dockerfile.py)


# --- the start step ---------------------------------------------------------------------------------


def _container_env(base: dict[str, str], state: Path) -> dict[str, str]:
    """What ``docker run -e`` adds on top of the image's environment: a port, the writable state volume."""
    state.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in base.items() if k not in ("M3_USERS", "M3_AUTH_USERS_FILE", "M3_AUTH_TRUSTED_HEADER")}
    env.update(M3_SERVER_PORT=str(free_port()), M3_AUDIT_LOG_PATH=str(state / "audit.jsonl"),
               M3_PACS_OUTBOX_DIR=str(state / "outbox"), OMP_NUM_THREADS="1")
    return env


def check_start_step(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
    """Run the CMD twice: without a login configured it must refuse to start; with ``M3_USERS`` it must
    serve ``/healthz`` (no login) and refuse the page's API to anyone not logged in."""
    refused = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "m3: error: refusing to listen on '0.0.0.0' without authentication" in refused.stderr
    assert "M3_USERS" in refused.stderr and "m3 app on" not in refused.stderr

    env = {**env, "M3_USERS": f"alice:{hash_password(PASSWORD)}"}
    url = f"http://127.0.0.1:{env['M3_SERVER_PORT']}"
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, health = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None and health.status_code == 200, log.read_text()[-3000:]
        assert health.json()["status"] == "ok"
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/config").status_code == 401
            assert http.post("/gradio_api/call/upload", json={"data": [[]]}).status_code == 401
            assert http.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
            assert http.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
            assert http.get("/config").status_code == 200  # the session cookie opens the page
    finally:
        stop_process(server, timeout=15)


def test_container_cmd_refuses_without_login_and_serves_with_one(dockerfile, tmp_path):
    """ENTRYPOINT + CMD from this checkout (``python -m app.main`` is the ``m3`` script), with the config
    file the image bakes in (docs/m3.toml → /etc/m3/m3.toml: host 0.0.0.0, no users)."""
    import json

    entry, cmd = json.loads(dockerfile.one("ENTRYPOINT").text), json.loads(dockerfile.one("CMD").text)
    assert entry == ["m3"] and cmd[:3] == ["serve", "--host", "0.0.0.0"]
    env = _container_env(dict(os.environ), tmp_path / "state")
    env.update(M3_CONFIG=str(ROOT / "docs" / "m3.toml"), PYTHONPATH=str(ROOT))
    check_start_step([sys.executable, "-m", "app.main", *cmd], env, tmp_path, tmp_path / "serve.log")


@pytest.mark.slow
def test_container_cmd_from_the_installed_package_in_a_fresh_venv(dockerfile, image_stand_in, tmp_path):
    """The Dockerfile's RUN steps in a fresh venv (as test_dockerfile.py runs them), then its ENTRYPOINT + CMD
    as the installed ``m3`` script, from the image's WORKDIR, with the image's environment."""
    import json

    stand = image_stand_in(TORCH_INDEX_URL=LOCAL_INDEX)
    for ins in dockerfile.instructions:
        if ins.keyword == "WORKDIR":
            stand.set_workdir(ins)
        elif ins.keyword == "COPY":
            stand.copy(ins)
        elif ins.keyword == "RUN" and "useradd" not in ins.text:  # the root-only system step cannot run here
            result = stand.run(ins.text)
            assert result.returncode == 0, f"RUN {ins.text}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            if "-m venv" in ins.text:
                stand.reuse_site_packages()
    stand.set_workdir(dockerfile.all("WORKDIR")[-1])
    m3 = Path(stand.env["VIRTUAL_ENV"]) / "bin" / json.loads(dockerfile.one("ENTRYPOINT").text)[0]
    assert m3.is_file() and Path(stand.env["M3_CONFIG"]).is_file()
    env = _container_env(stand.env, tmp_path / "state")
    check_start_step([str(m3), *json.loads(dockerfile.one("CMD").text)], env, stand.workdir, tmp_path / "serve.log")


def test_the_page_assets_ship_as_package_data():
    """``m3 serve`` reads app/assets (the page's CSS) from the installed package: each asset must match a
    package-data pattern of pyproject.toml, or the installed server fails at start (the slow test above)."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    from app.server import ASSETS

    missing = [p.name for p in ASSETS.iterdir() if p.is_file() and not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    assert not missing, f"app/assets files not installed with the package: {missing}; add their pattern to [tool.setuptools.package-data]"


# --- manifest verification before loading ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """(source checkpoint, ``m3 export`` build) of a tiny random VILA-layout model (tests/vlm's builders)."""
    from vlm.export import ExportConfig, export_build
    from vlm.tokenizer import TokenizerConfig, train_tokenizer

    spec = importlib.util.spec_from_file_location("m3_vlm_builders", ROOT / "tests" / "vlm" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    root = tmp_path_factory.mktemp("manifest")
    model = builders.build_tiny_m3(train_tokenizer(builders.CORPUS, None, TokenizerConfig(vocab_size=600)))
    model.save_pretrained(root / "src")
    return root / "src", export_build(root / "src", root / "build", ExportConfig(dtype="float32", measure_memory=False))


def _tampered_copy(build: Path, dest: Path) -> Path:
    """The build with one byte of the projector weights changed (same size, still a loadable file)."""
    shutil.copytree(build, dest)
    weights = dest / "mm_projector" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return dest


def test_a_tampered_build_is_refused_before_loading(tiny_build, tmp_path, monkeypatch, capsys):
    import app.server
    from app.main import main
    from app.server import load_backend
    from experts.manifest import ManifestError
    from vlm.backends import load_backend as load_model_folder

    src, build = tiny_build
    assert load_backend(AppConfig(models=_models(build))).backend is not None  # an intact build loads
    assert load_backend(AppConfig(models=_models(src))).backend is not None  # no manifest (a published checkpoint) loads
    tampered = _tampered_copy(build, tmp_path / "tampered")

    with pytest.raises(ConfigError, match=r"models\.model_dir .*tampered was refused: .*changed mm_projector/model\.safetensors"):
        load_backend(AppConfig(models=_models(tampered)))
    monkeypatch.delenv("M3_CONFIG", raising=False)
    monkeypatch.delenv("M3_USERS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--model", str(tampered), "--port", str(free_port())]) == 1  # the start is refused
    assert "does not match its manifest" in capsys.readouterr().err

    monkeypatch.setattr(app.server, "embedded_model_dir", lambda: tampered)
    status = load_backend(AppConfig())
    assert status.backend is None
    assert "Chat is off: the built-in language model failed its integrity check" in status.banner
    assert "tampered" not in status.banner and "manifest" not in status.banner  # plain words for clinicians
    assert "changed mm_projector/model.safetensors" in status.admin_hint and "m3 manifest verify" in status.admin_hint
    with pytest.raises(ManifestError, match="changed mm_projector"):  # m3 chat / ask / eval / serve-lm load the same way
        load_model_folder(tampered)


def test_healthz_fails_when_the_embedded_model_was_refused(tiny_build, tmp_path, monkeypatch):
    import httpx

    import app.server
    from app.server import serve

    _, build = tiny_build
    monkeypatch.setattr(app.server, "embedded_model_dir", lambda: _tampered_copy(build, tmp_path / "tampered"))
    config = AppConfig()
    config.server = dataclasses.replace(config.server, port=free_port())
    config.audit = dataclasses.replace(config.audit, log_path=tmp_path / "audit.jsonl")
    running = serve(config, block=False)
    try:
        health = httpx.get(f"{running.url}/healthz", timeout=5)
        assert health.status_code == 503
        chat = health.json()["checks"]["chat_model"]
        assert chat["ok"] is False and "integrity check" in chat["detail"]
    finally:
        running.close()


def _models(folder: Path):
    from app.config import ModelsConfig

    return ModelsConfig(model_dir=folder)
