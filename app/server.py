"""The clinician's web app (Gradio Blocks on FastAPI) and how it is served.

``build_app(config)`` loads the language model (``--model`` / config, else the embedded default bundle,
else none: chat disabled, experts and viewer still work), lays out the page, mounts it with login on a
FastAPI app that also answers ``/healthz``; ``serve`` runs it with uvicorn. Refuses a non-loopback bind
without authentication; never creates a share link; Gradio analytics and Hugging Face telemetry are off
and nothing is fetched from the internet.
"""

from __future__ import annotations

import os

# Before gradio is imported anywhere: no analytics, no hub calls, no version checks.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import logging  # noqa: E402
import secrets  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from starlette.middleware.sessions import SessionMiddleware  # noqa: E402

from app.access_log import access_logged  # noqa: E402
from app.audit import AuditLog, record_service_start  # noqa: E402
from app.auth import PasswordAuth, TrustedHeaderAuth, check_login_methods, load_users, require_auth_for_host  # noqa: E402
from app.chat import NO_MODEL_MESSAGE, ChatEngine  # noqa: E402
from app.config import AppConfig, ConfigError  # noqa: E402
from app.events import EXAMPLES, SERIES_COLUMNS, AppEvents, UploadLimits  # noqa: E402
from app.oidc import OidcLogin  # noqa: E402
from app.pacs_panel import PacsComponents, PacsPanel  # noqa: E402
from app.route_guard import behind_proxies, guard_routes  # noqa: E402
from app.session import close_session, live_sessions, new_session  # noqa: E402
from app.viewer import PLANES, SLICE_KEYS_JS  # noqa: E402
from app.webviewer import ROOT_HTML, SHOW_JS, VIEWER_HEAD, mount_viewer_routes  # noqa: E402

__all__ = ["ServeOptions", "ModelStatus", "load_backend", "load_router", "build_blocks", "build_app", "serve", "RunningServer",
           "embedded_model_dir"]

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
DEFAULT_INTENDED_USE = "Decision support and research on de-identified studies. Not a medical device; every output must be checked by a clinician."


@dataclass
class ServeOptions:
    """Serving settings beyond ``AppConfig``: per-session state lifetime, agent rounds, expert concurrency."""

    session_ttl_s: float = 4 * 3600.0  # a session's study is dropped this long after its last change
    max_rounds: int = 3  # tool-call rounds per answer
    expert_concurrency: int = 2  # simultaneous direct expert runs (the experts share the CPU/GPU)
    ingest_concurrency: int = 4
    sweep_interval_s: float = 600.0  # how often leftover raw-upload folders of ended ingests are removed



@dataclass
class ModelStatus:
    """The loaded chat model (``backend``) or why there is none (``problem``), for the banner."""

    backend: Any = None
    source: str = ""  # folder it came from
    problem: str = ""  # why there is no chat, in plain words for a clinician
    admin_hint: str = ""  # what the administrator runs to fix it

    @property
    def banner(self) -> str:
        if self.backend is None:
            why = f": {self.problem}" if self.problem else ""
            return (f"### Chat is off{why}.\nQuestions cannot be answered. You can still open studies, scroll them and run "
                    "the experts with the buttons under the chat.")
        info = self.backend.info
        version = f" `{info.version}`" if info.version else ""
        return f"**Model:** {info.name}{version} · **Intended use:** {_intended_use(info.model_card)}"


@dataclass
class RunningServer:
    """A server started with ``serve(..., block=False)``: its ``url``; ``close()`` stops it."""

    url: str
    server: Any
    thread: threading.Thread
    blocks: Any = field(repr=False, default=None)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def embedded_model_dir() -> Path | None:
    """The default VLM shipped as package data (``vlm/weights/default``), if this build carries one."""
    import vlm

    folder = Path(vlm.__file__).parent / "weights" / "default"
    return folder if (folder / "config.json").is_file() else None


def load_backend(config: AppConfig) -> ModelStatus:
    """The chat backend: the remote LM at ``config.models.lm_url``, else ``config.models.model_dir``, else the
    embedded bundle, else none.

    A remote LM (``vlm.backends.openai_api.connect``) only writes; experts, grounding and the audit log stay in this
    process. A server that refuses the key or does not serve ``models.lm_model`` refuses the start; one not up yet
    is logged and each question says so. Folders load through ``vlm.backends.load_backend`` (the loader of every
    command, which verifies a folder's ``manifest.json`` first): a configured model that fails refuses the start
    (``ConfigError``); when the embedded one fails, chat is off and the banner and ``/healthz`` say why.
    """
    from experts.manifest import ManifestError
    from vlm.backends import load_backend as load_model_folder

    if config.models.lm_url:
        from vlm.backends.openai_api import RemoteBackendError, connect

        try:
            remote = connect(config.models.lm_url, config.models.lm_model, api_key=config.models.lm_api_key or None)
        except RemoteBackendError as exc:
            raise ConfigError(f"models.lm_url was refused: {exc}") from exc
        return ModelStatus(backend=remote, source=config.models.lm_url)
    folder = config.models.model_dir or embedded_model_dir()
    if folder is None:
        return ModelStatus(problem="this installation carries no language model and none is configured",
                           admin_hint="set models.model_dir (or M3_MODELS_MODEL_DIR) to a model folder and restart.")
    try:
        backend = load_model_folder(folder, device=config.models.device, dtype=config.models.dtype)  # DeviceError: no CUDA
        return ModelStatus(backend=backend, source=str(folder))
    except ManifestError as exc:
        if config.models.model_dir is not None:
            raise ConfigError(f"models.model_dir {folder} was refused: {exc}") from exc
        log.error("embedded model refused: %s", exc)
        return ModelStatus(problem="the built-in language model failed its integrity check (its files changed after release)",
                           admin_hint=f"{exc} Reinstall m3, or in a source checkout run `git checkout -- {_shown(folder)}`; "
                                      f"`m3 manifest verify {_shown(folder)}` then lists no problem.")
    except (OSError, ValueError, ImportError) as exc:  # ModelLoadError is a ValueError
        if config.models.model_dir is not None:  # an explicitly configured model must load
            raise ConfigError(f"models.model_dir {folder} could not be loaded: {exc}") from exc
        log.warning("embedded model not loaded: %s", exc)
        return ModelStatus(problem="the built-in language model could not be loaded",
                           admin_hint=f"{type(exc).__name__}: {exc} Reinstall m3 or set models.model_dir to a model folder.")


def load_router(config: AppConfig) -> Any:
    """The ``vlm.routing.Router`` of ``config.routing`` (the large model connected), or None when routing is off. A
    large model server that refuses the key or does not serve ``routing.large_lm_model`` refuses the start; one not up
    yet is logged, and escalated questions keep the local answer until it is (``vlm.routing.router``)."""
    from vlm.backends.openai_api import RemoteBackendError
    from vlm.routing import build_router

    try:
        return build_router(config.routing)
    except RemoteBackendError as exc:
        raise ConfigError(f"routing.large_lm_url was refused: {exc}") from exc


def _shown(folder: Path | str) -> str:
    """A model folder as the admin would type it: relative to the working folder when under it."""
    try:
        return str(Path(folder).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def build_blocks(events: AppEvents, status: ModelStatus, expert_names: list[str], options: ServeOptions, concurrency: int,
                 pacs: PacsPanel | None = None, experts_note: str = "", upload_cache_s: int = 300) -> gr.Blocks:
    """The page: banner; study panel (upload, examples, series; the PACS search when ``pacs``); viewer;
    chat with the expert buttons and their status line; report (with "Send results to PACS" when ``pacs``).

    The experts are loaded here (their titles label the buttons, and the first click does not wait for weights).
    Progress shows on one status line per event (an expert run on the line under the buttons), never over the
    viewer, legend or chat."""
    pacs_ui = PacsComponents() if pacs is not None else None
    expert_labels = events.expert_titles(expert_names)
    # delete_cache: remove cached uploads and pictures older than limits.upload_cache_s (raw uploads may hold PHI),
    # checking every quarter of that; not at once after ingest: the cache is shared by content hash across sessions
    with gr.Blocks(title="m3 — imaging assistant", delete_cache=(max(15, upload_cache_s // 4), upload_cache_s)) as blocks:
        state = gr.State(new_session, time_to_live=options.session_ttl_s, delete_callback=close_session)
        gr.Markdown(status.banner + (f"  \n{experts_note}" if experts_note else ""), elem_id="m3-banner")
        if status.admin_hint:
            with gr.Accordion("Details for the administrator", open=False, elem_id="m3-admin-hint"):
                gr.Markdown(status.admin_hint)
        if status.backend is not None and status.backend.info.model_card:
            with gr.Accordion("Model card", open=False):
                gr.Markdown(status.backend.info.model_card)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                gr.Markdown("#### Study")
                upload = gr.File(label="DICOM files, a .zip, NIfTI or an image", file_count="multiple", elem_id="m3-upload")
                folder = gr.UploadButton("Upload a folder", file_count="directory", size="sm")
                with gr.Row():
                    example_buttons = [gr.Button(label, size="sm", elem_classes="m3-example") for label in EXAMPLES]
                study_status = gr.Markdown("Upload a study or open an example.", elem_id="m3-study-status")
                table = gr.Dataframe(headers=SERIES_COLUMNS, interactive=False, wrap=True, max_height=260,
                                     column_widths=["5%", "18%", "24%", "23%", "30%"], elem_id="m3-series-table")
                series = gr.Dropdown(label="Series", choices=[], elem_id="m3-series")
                if pacs is not None:
                    pacs.search_layout(pacs_ui)
            with gr.Column(scale=5, min_width=360):
                # the browser viewer (app.webviewer); the server-rendered one below shows where WebGL2 is missing
                gr.HTML(ROOT_HTML, elem_id="m3-web", elem_classes="m3-web")
                payload = gr.Textbox(elem_id="m3-web-payload", elem_classes="m3-offscreen", show_label=False, interactive=False)
                client_view = gr.Textbox(value="", elem_id="m3-web-view", elem_classes="m3-offscreen", show_label=False)
                with gr.Column(elem_id="m3-server-viewer"):
                    image = gr.Image(label="Viewer", type="filepath", format="png", interactive=False, height=520,
                                     elem_id="m3-viewer", buttons=["download", "fullscreen"])
                    caption = gr.Markdown(elem_id="m3-caption")
                    slider = gr.Slider(1, 2, value=1, step=1, label="Slice", interactive=False, elem_id="m3-slice")
                    with gr.Row():
                        plane = gr.Radio(list(PLANES), value="axial", label="Plane", elem_id="m3-plane")
                        preset = gr.Dropdown(label="Window", choices=[], elem_id="m3-preset")
                    with gr.Row():
                        centre = gr.Number(value=None, label="Window centre", elem_id="m3-centre")
                        width = gr.Number(value=None, label="Window width", elem_id="m3-width")
                with gr.Row():
                    shown = gr.Dropdown(label="Overlay", choices=[], elem_id="m3-overlay")
                    opacity = gr.Slider(0.0, 1.0, value=0.45, step=0.05, label="Overlay opacity", elem_id="m3-opacity")
                legend = gr.HTML(elem_id="m3-legend")
            with gr.Column(scale=5, min_width=360):
                chatbot = gr.Chatbot(label="Assistant", height=520, elem_id="m3-chat", group_consecutive_messages=False)
                question = gr.Textbox(placeholder=("Ask about this series…" if status.backend else NO_MODEL_MESSAGE),
                                      show_label=False, interactive=status.backend is not None, elem_id="m3-question")
                ask = gr.Button("Ask", variant="primary", interactive=status.backend is not None, elem_id="m3-ask")
                gr.Markdown("Run an expert directly:")
                with gr.Row():
                    expert_buttons = [gr.Button(label, size="sm", elem_classes="m3-expert") for label in expert_labels]
                expert_status = gr.Markdown(elem_id="m3-expert-status")
                gr.HTML("<a href='#m3-report'>Go to the report ↓</a>", elem_id="m3-report-link")  # below the fold on a laptop
        with gr.Accordion("Report", open=True, elem_id="m3-report"):
            draft = gr.Button("Draft report", elem_id="m3-draft")
            report_status = gr.Markdown(elem_id="m3-report-status")  # under Draft, where the eye is when it is pressed
            findings = gr.Textbox(label="Findings", lines=6, elem_id="m3-findings")
            impression = gr.Textbox(label="Impression", lines=3, elem_id="m3-impression")
            export = gr.Button("Export (Markdown, PDF, DICOM SR, DICOM SEG)", elem_id="m3-export")
            downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, height=160, elem_id="m3-downloads")
            if pacs is not None:
                pacs.send_layout(pacs_ui)

        viewer = [image, caption, legend, slider, shown, payload]
        window = [preset, centre, width]
        study_out = [state, table, series, study_status, *viewer, chatbot, *window]
        ingest = dict(concurrency_limit=options.ingest_concurrency, concurrency_id="ingest", show_progress_on=[study_status])
        # a new upload replaces the old one (the upload box is emptied); another study empties the report
        after_study = dict(fn=events.after_study, inputs=[state], api_name=False, show_progress="hidden",
                           outputs=[upload, findings, impression, report_status, downloads, expert_status])
        upload.upload(events.upload, [upload, state], study_out, api_name="upload", **ingest).then(**after_study)
        folder.upload(events.upload, [folder, state], study_out, api_name="upload_folder", **ingest).then(**after_study)
        for button in example_buttons:
            button.click(events.example, [button, state], study_out, api_name=False, **ingest).then(**after_study)
        quiet = dict(show_progress="hidden")  # the picture changes in place; no spinner over the viewer
        series.input(events.select_series, [series, state], [state, *viewer, chatbot, *window], api_name="select_series", **quiet)
        fast = dict(trigger_mode="always_last", concurrency_limit=None, **quiet)
        plane.input(events.set_plane, [plane, state], [state, *viewer], api_name="plane", **fast)
        slider.input(events.set_slice, [slider, state], [state, *viewer], api_name="slice", **fast)
        preset.input(events.set_preset, [preset, state], [state, *viewer, *window], api_name="preset", **fast)
        for box in (centre, width):
            box.submit(events.set_window, [centre, width, state], [state, *viewer], api_name=False, **fast)
        opacity.input(events.set_overlay, [opacity, shown, state], [state, *viewer], api_name="overlay", **fast)
        shown.input(events.set_overlay, [opacity, shown, state], [state, *viewer], api_name=False, **fast)
        blocks.load(None, None, None, js=SLICE_KEYS_JS)  # mouse wheel and arrow / Page keys scroll the slices
        payload.change(None, [payload], None, js=SHOW_JS, api_name=False, **quiet)  # the browser viewer loads what changed
        model = dict(concurrency_limit=concurrency, concurrency_id="model")
        # chat turns queue on the model only while it writes (ChatEngine's slots), not while their experts run
        chat = dict(concurrency_limit=16, concurrency_id="chat")
        ask_outputs = [state, chatbot, question, *viewer]
        chat_progress = dict(show_progress="minimal", show_progress_on=[chatbot])
        # a question carries the browser viewer's slice on screen (client_view; empty from the API: the server's own view)
        ask_inputs = [question, state, client_view]
        question.submit(events.ask_on_screen, ask_inputs, ask_outputs, api_name=False, **chat, **chat_progress)
        ask.click(events.ask_on_screen, ask_inputs, ask_outputs, api_name="ask", **chat, **chat_progress)
        for button in expert_buttons:
            button.click(events.run_expert, [button, state], [state, chatbot, *viewer, expert_status, report_status],
                         api_name=False, concurrency_limit=options.expert_concurrency, concurrency_id="experts",
                         show_progress_on=[expert_status])
        on_status = dict(show_progress_on=[report_status])
        # Draft waits for the session's expert runs outside the model's queue, then drafts in it
        draft.click(events.wait_for_runs, [state], [report_status], api_name=False, concurrency_limit=None, **on_status).success(
            events.draft_report, [state], [state, findings, impression, report_status], api_name="draft_report", **model, **on_status)
        export.click(events.export_report, [findings, impression, state], [state, downloads, report_status], api_name="export_report",
                     **on_status)
        if pacs is not None:
            pacs.wire(pacs_ui, state, study_out, findings, impression, after_study)
    return blocks


def build_app(config: AppConfig, *, backend: Any = None, registry: Any = None, options: ServeOptions | None = None,
              router: Any = None) -> tuple[Any, gr.Blocks, ModelStatus]:
    """(FastAPI app with the page at ``/`` and ``/healthz``, the Blocks, the model status).

    backend: a ``ChatBackend`` to use instead of loading one (tests, an OpenAI-compatible server); router: a
    ``vlm.routing.Router`` to use instead of the one ``config.routing`` sets up (``load_router``);
    registry: an expert registry (default: ``experts.registry.registry_for`` on ``config.experts_source()``, the site
    folder, else an export's experts, else the embedded bundle).
    Raises ``ConfigError`` for a non-loopback bind without authentication, two login methods or a bad model folder.
    """
    from fastapi import FastAPI

    from app.health import mount_health

    options = options or ServeOptions()
    _start_upload_sweeper(options.sweep_interval_s)
    users = load_users(config.auth.users_file)
    header = config.auth.trusted_header
    check_login_methods(header, users, config.auth.oidc_issuer)
    require_auth_for_host(config.server.host, bool(users) or bool(header) or bool(config.auth.oidc_issuer))
    status = ModelStatus(backend=backend, source="given") if backend is not None else load_backend(config)
    if registry is None:
        registry = experts_registry(config)
    audit = AuditLog(config.audit.log_path, max_bytes=int(config.audit.max_mb * 2**20), keep_files=config.audit.keep_files)
    router = router if router is not None else load_router(config)
    engine = ChatEngine(status.backend, registry, audit, max_rounds=options.max_rounds, model_slots=config.limits.concurrency,
                        expert_slots=options.expert_concurrency, router=router)
    events = AppEvents(engine, audit, UploadLimits(config.limits.max_files, config.limits.max_upload_mb))
    pacs = PacsPanel(config.pacs, events) if config.pacs.enabled else None
    blocks = build_blocks(events, status, registry.names(), options, config.limits.concurrency, pacs,
                          experts_note=_experts_note(registry), upload_cache_s=config.limits.upload_cache_s)
    models = {"chat_model": _model_name(status), "experts": _expert_versions(registry)}
    if router is not None and router.large is not None:
        models["large_model"] = f"{router.large.info.name} {router.large.info.version}".strip()
    record_service_start(audit, _settings(config), models)
    blocks.queue(default_concurrency_limit=8, max_size=256)

    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    mount_viewer_routes(api, config.server.root_path)  # before the page: Gradio's mount would answer these paths otherwise
    health_paths = mount_health(api, config, {"sessions": lambda: (True, f"{live_sessions()} live"),
                                              "chat_model": lambda: _chat_health(status),
                                              "experts": lambda: _experts_health(registry)})
    auth: dict[str, Any] = {}
    oidc = None
    if config.auth.oidc_issuer:  # single sign-on: its routes before the page, which would answer them otherwise
        oidc = OidcLogin(config.auth, prefix=config.server.root_path, audit=audit)
        oidc.add_routes(api)
        auth["auth_dependency"] = oidc
    elif header:
        auth["auth_dependency"] = TrustedHeaderAuth(header, config.auth.trusted_proxies)
    elif users:
        auth["auth"] = PasswordAuth(users, audit=audit)
        auth["auth_message"] = "Sign in with your hospital account."
    gr.mount_gradio_app(
        api, blocks, path=config.server.root_path or "/", server_name=config.server.host, server_port=config.server.port,
        footer_links=[], run_history=False, mcp_server=False, ssr_mode=False, show_error=True,
        max_file_size=f"{config.limits.max_upload_mb}mb", css_paths=[ASSETS / "m3.css"], theme=gr.themes.Default(), head=VIEWER_HEAD,
        **auth,
    )
    if auth:  # only /, /login, static assets and the health routes without a session; sign-ins rate-limited per address
        guard_routes(api, config, audit=audit, open_paths=health_paths + (oidc.open_paths if oidc else ()),
                     sign_in_url=oidc.sign_in_url if oidc else "")
    if oidc is not None:  # outside the guard: the sign-in's state and the session id travel in a signed cookie
        api.add_middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), session_cookie="m3_oidc",
                           path=config.server.root_path or "/", same_site="lax", max_age=None)
    return api, blocks, status


def serve(config: AppConfig, *, backend: Any = None, registry: Any = None, options: ServeOptions | None = None,
          block: bool = True) -> RunningServer | None:
    """Run the app with uvicorn on ``config.server.host:port``. ``block=False`` starts it in a thread and
    returns once it accepts connections (tests, benchmarks)."""
    import uvicorn

    api, blocks, status = build_app(config, backend=backend, registry=registry, options=options)
    log.info("m3 app on http://%s:%d (model: %s)", config.server.host, config.server.port,
             status.backend.info.name if status.backend else "none")
    # X-Forwarded-For / -Proto believed from auth.trusted_proxies only (uvicorn's middleware, the raw peer kept for the
    # proxy-header login); uvicorn's own copy of that middleware, and its access log (full paths), stay off
    asgi = behind_proxies(access_logged(api), config.auth.trusted_proxies)
    # no uvicorn root_path: the proxy passes the server.root_path prefix on and the page and routes are mounted under
    # it (a root_path here too would make the page load its parts from /m3/m3)
    server = uvicorn.Server(uvicorn.Config(asgi, host=config.server.host, port=config.server.port, log_level="warning",
                                           timeout_graceful_shutdown=3, proxy_headers=False))
    if block:
        server.run()
        return None
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, name="m3-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"the app did not start on {config.server.host}:{config.server.port}; is the port in use?")
        time.sleep(0.05)
    return RunningServer(f"http://{config.server.host}:{config.server.port}", server, thread, blocks)


def _start_upload_sweeper(interval_s: float) -> None:
    """Remove raw-upload folders left by ingests that ended without cleaning up (a crash, a kill -9: they may hold
    identified files) now, then every ``interval_s`` seconds in a daemon thread (``data.workdir``)."""
    from data.workdir import sweep_stale_ingest_dirs

    def sweep() -> None:
        removed = sweep_stale_ingest_dirs()
        if removed:
            log.warning("removed %d leftover raw-upload folder(s) of ended ingests", removed)

    sweep()

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            sweep()

    threading.Thread(target=loop, name="m3-upload-sweeper", daemon=True).start()


def experts_registry(config: AppConfig) -> Any:
    """The expert registry ``config`` names (``AppConfig.experts_source``: ``models.experts_dir``, else the experts of
    the export at ``models.model_dir``, else the embedded bundle); a folder that cannot serve refuses the start."""
    from experts.base import ExpertError
    from experts.registry import registry_for

    folder, source = config.experts_source()
    try:
        return registry_for(folder, embedded_fallback=config.models.embedded_experts_fallback, source=source)
    except ExpertError as exc:
        raise ConfigError(f"models.experts_dir ({source}) was refused: {exc}") from exc


def _expert_versions(registry: Any) -> dict[str, str]:
    return {name: info["version"] for name, info in registry.describe().items()}


def _experts_note(registry: Any) -> str:
    """The page's line naming the experts in use: ``**Experts:** name `version` (source), ...``."""
    described = registry.describe()
    return "**Experts:** " + ", ".join(f"{n} `{d['version'] or 'unversioned'}`" + (f" ({d['source']})" if d["source"] else "")
                                       for n, d in described.items()) if described else ""


def _experts_health(registry: Any) -> tuple[bool, Any]:
    """The health check of the experts: each one loads; the detail maps name → version and source (no paths)."""
    try:
        return True, registry.describe()
    except Exception as exc:  # any failure to load is reported by the health route, never raised out of it
        return False, f"{type(exc).__name__}: an expert failed to load"


def _model_name(status: ModelStatus) -> str:
    if status.backend is None:
        return ""
    info = status.backend.info
    return f"{info.name} {info.version}".strip()


def _settings(config: AppConfig) -> dict[str, Any]:
    """The settings as ``"section.key" → value`` for the audit log's service start, without secrets."""
    import dataclasses

    from app.config import SECRET_ENV

    flat = {}
    for section in dataclasses.fields(config):
        if section.name == "source":
            continue
        for key, value in dataclasses.asdict(getattr(config, section.name)).items():
            name = f"{section.name}.{key}"
            if name not in SECRET_ENV:
                flat[name] = list(value) if isinstance(value, tuple) else (str(value) if isinstance(value, Path) else value)
    return flat


def _chat_health(status: ModelStatus) -> tuple[bool, str]:
    """The ``/healthz`` chat check: failing (HTTP 503) when chat was meant to be on and the model was refused."""
    if status.backend is not None and getattr(status.backend.info, "remote", False) and hasattr(status.backend, "list_models"):
        try:  # a remote language model is checked where it runs: its server answers and still serves the model
            served = status.backend.list_models()
        except Exception as exc:  # noqa: BLE001 — any failure of the remote server is the check's answer
            return False, f"remote language model unreachable: {exc}"
        if status.backend.info.name not in served:
            return False, f"the LM server no longer serves {status.backend.info.name} (it serves {', '.join(served) or 'nothing'})"
        return True, f"{status.backend.info.name} ({status.backend.info.version})"
    if status.backend is not None:
        return True, status.backend.info.name
    return False, f"chat disabled: {status.problem or 'no language model'}"


def _intended_use(card: str) -> str:
    """The first paragraph under an "Intended use" heading of a model card, else the default statement."""
    lines = card.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip("#").strip().lower().startswith("intended use"):
            body = []
            for text in lines[i + 1:]:
                if text.startswith("#"):
                    break
                if text.strip() or body:
                    body.append(text.strip())
                if body and not text.strip():
                    break
            if body:
                return " ".join(b for b in body if b)
    return DEFAULT_INTENDED_USE
