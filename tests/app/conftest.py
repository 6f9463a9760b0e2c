"""Fixtures for the app tests: a phantom CT as a DICOM zip, a scripted chat backend, a tiny threshold
expert, and the app served on a free localhost port with one user.

The scripted backend and the threshold expert are stand-ins so that the app's mechanics (upload,
de-identified series, viewer, streaming, tool-call steps, overlays, audit, report export, sessions,
login) are tested without trained weights; neither pretends to be a real model.
"""

from __future__ import annotations

import importlib.util
import socket
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PASSWORD = "correct horse battery"


def load_scripted_backend():
    """``tests/app/scripted_backend.py`` as a module (tests have no packages)."""
    spec = importlib.util.spec_from_file_location("m3_scripted_backend", HERE / "scripted_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ct_zip(tmp_path_factory) -> Path:
    """A small phantom CT study written as DICOM and zipped (what a clinician would upload)."""
    from data.phantoms import DICOM_DIRNAME, generate, write_study

    root = tmp_path_factory.mktemp("ct")
    study = write_study(generate("ct", 3, shape=(64, 64, 24)), root / "study")
    archive = root / "ct_study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((study / DICOM_DIRNAME).rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(study))
    return archive


@pytest.fixture(scope="session")
def scripted_module():
    return load_scripted_backend()


def make_registry(scripted_module):
    """Only the threshold test expert: these tests check the app, not a model's quality."""
    from experts.registry import ExpertRegistry

    reg = ExpertRegistry()
    reg.register("threshold_volume", scripted_module.ThresholdExpert)
    return reg


def app_config(tmp_path: Path, users: dict[str, str] | None = None, **limits):
    from app.auth import hash_password
    from app.config import AppConfig

    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    if users is not None:
        users_file = tmp_path / "users.toml"
        users_file.write_text("[users]\n" + "".join(f'{u} = "{hash_password(p)}"\n' for u, p in users.items()))
        cfg.auth.users_file = users_file
    for key, value in limits.items():
        setattr(cfg.limits, key, value)
    return cfg


@pytest.fixture(scope="module")
def served(tmp_path_factory, scripted_module):
    """The app on a free port with user alice, the scripted backend and the threshold expert."""
    from app.server import serve

    tmp = tmp_path_factory.mktemp("app")
    cfg = app_config(tmp, {"alice": PASSWORD, "bob": PASSWORD}, max_files=50)
    backend = scripted_module.ScriptedBackend()
    server = serve(cfg, backend=backend, registry=make_registry(scripted_module), block=False)
    yield server, cfg
    server.close()
