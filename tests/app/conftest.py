"""Fixtures for the app tests: a phantom CT as a DICOM zip, a scripted chat backend, a tiny threshold
expert, and the app served on a free localhost port with one user.

The scripted backend and the threshold expert are stand-ins so that the app's mechanics (upload,
de-identified series, viewer, streaming, tool-call steps, overlays, audit, report export, sessions,
login) are tested without trained weights; neither pretends to be a real model.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from localhost import free_port

HERE = Path(__file__).parent
PASSWORD = "correct horse battery"


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
    import scripted_backend

    return scripted_backend


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
