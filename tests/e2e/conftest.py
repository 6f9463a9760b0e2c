"""Browser fixtures: the app served on a free localhost port, and Debian's Chromium driven by Playwright.

Chromium is the system package (``scripts/system_deps.sh`` installs it); Playwright's own browser
download is never used. The chat model is the scripted test backend ``tests/scripted_backend.py`` (it is not a
language model: it emits a tool call for a measurement question and then quotes the tool's numbers),
so these tests check the app's mechanics in a real browser. The expert is the trained CT segmentation
when its weights are in the tree, else a threshold test expert (``tests/scripted_backend.py``).
``flows_server`` adds a slow and a failing test expert (``tests/stand_in_experts.py``) to the built-in ones.
A test that fails leaves a screenshot of each page it opened through ``new_page`` in tests/artifacts/.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import scripted_backend
from localhost import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# WebGL2 for the browser viewer in software (SwiftShader): headless machines have no GPU
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
USER, PASSWORD = "dr.test", "e2e password 42"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/system_deps.sh` (apt-get install chromium) first.")
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def phantom_zip(tmp_path_factory) -> Path:
    """A phantom abdominal CT as a zip of DICOM files, with a fake patient identity in the headers."""
    from data.phantoms import DICOM_DIRNAME, generate, write_study

    root = tmp_path_factory.mktemp("e2e-study")
    study = write_study(generate("ct", 7, shape=(96, 96, 40)), root / "study", patient={"PatientName": "Doe^Jane"})
    archive = root / "phantom_ct.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((study / DICOM_DIRNAME).rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(study))
    return archive


@pytest.fixture(scope="session")
def scenario():
    """(registry, question, expert, structure): the trained CT expert when its weights are present
    (liver volume), else the threshold test expert (dense tissue volume)."""
    return scripted_backend.registry_for_tests()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, scenario):
    """The real app (real ingest, experts, report export) with the scripted chat backend, login required."""
    from app.auth import hash_password
    from app.config import AppConfig
    from app.server import serve

    tmp = tmp_path_factory.mktemp("e2e-app")
    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp / "audit.jsonl"
    cfg.auth.users_file = tmp / "users.toml"
    cfg.auth.users_file.write_text(f'[users]\n"{USER}" = "{hash_password(PASSWORD)}"\n')
    backend = scripted_backend.ScriptedBackend(delay_s=0.02)
    server = serve(cfg, backend=backend, registry=scenario[0], block=False)
    yield server, cfg
    server.close()


@pytest.fixture(scope="session")
def credentials() -> tuple[str, str]:
    return USER, PASSWORD


@pytest.fixture(scope="module")
def flows_server(tmp_path_factory):
    """The real app with the scripted chat backend, no login (localhost), and these experts: the built-in ones
    (the instances already loaded in this process), ``SlowExpert`` and ``BrokenExpert``."""
    from stand_in_experts import BrokenExpert, SlowExpert

    from app.config import AppConfig
    from app.server import serve
    from experts.registry import ExpertRegistry, default_registry

    shared, registry = default_registry(), ExpertRegistry()
    for name in shared.names():
        registry.register(name, lambda expert=shared.get(name): expert)
    for expert in (SlowExpert, BrokenExpert):
        registry.register(expert.name, expert)
    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path_factory.mktemp("e2e-flows") / "audit.jsonl"
    server = serve(cfg, backend=scripted_backend.ScriptedBackend(), registry=registry, block=False)
    yield server, cfg
    server.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.m3_failed = report.failed


@pytest.fixture()
def new_page(request, browser, artifacts):
    """``new_page(**context options)`` → a page in a fresh browser context; on failure each page's screenshot
    is kept as tests/artifacts/<test>-failed-<n>.png."""
    contexts = []

    def make(**options):
        context = browser.new_context(**{"viewport": {"width": 1600, "height": 1100}, **options})
        contexts.append(context)
        return context.new_page()

    yield make
    for n, context in enumerate(contexts):
        if getattr(request.node, "m3_failed", False):
            for k, page in enumerate(context.pages):
                page.screenshot(path=str(artifacts / f"{request.node.name}-failed-{n}{k}.png"), full_page=True)
        context.close()


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
