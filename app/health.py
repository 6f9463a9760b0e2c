"""Liveness and readiness: ``/livez``, ``/readyz``, ``/healthz`` and the check the container's HEALTHCHECK runs.

Three pieces, so the check works without the full app:

- ``mount_health(fastapi_app, config)`` adds three routes to any FastAPI app (the Gradio app mounts them;
  they need no login and return neither PHI nor install paths), at ``/NAME`` and, with ``server.root_path``,
  also at ``ROOT_PATH/NAME`` (a proxy that keeps the prefix, and the HEALTHCHECK's own URL):
  ``/livez`` 200 while the process answers; ``/readyz`` 200 when it can serve (model loaded, experts loaded,
  audit log writable), else 503; ``/healthz`` every check with its detail, 200 or 503;
- ``create_health_app(config)`` is a FastAPI app with only that route (``python -m app.health serve``);
- ``python -m app.health [--url URL]`` (also ``m3 health``) fetches the endpoint and exits 0 when
  healthy, 1 otherwise. It imports nothing heavy, so a HEALTHCHECK every 30 s costs little.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from app.config import AppConfig, ConfigError, load_config

__all__ = [
    "HealthReport",
    "health_report",
    "mount_health",
    "create_health_app",
    "check_url",
    "default_url",
    "add_parsers",
    "main",
    "HEALTH_PATH",
    "LIVE_PATH",
    "READY_PATH",
    "PROBES",
]

HEALTH_PATH = "/healthz"
LIVE_PATH = "/livez"
READY_PATH = "/readyz"
PROBES = {"health": HEALTH_PATH, "ready": READY_PATH, "live": LIVE_PATH}
Check = Callable[[], tuple[bool, Any]]  # () -> (ok, short detail: text or JSON, without PHI or install paths)
READY_CHECKS = ("audit_log", "chat_model", "experts")  # what /readyz needs; the app supplies the last two


@dataclass
class HealthReport:
    """The ``/healthz`` body: ``status`` is ``ok`` only when every check passed."""

    status: str
    version: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "version": self.version, "checks": self.checks}


def health_report(config: AppConfig, extra_checks: dict[str, Check] | None = None, *,
                  only: tuple[str, ...] | None = None) -> HealthReport:
    """Run the cheap checks (no model is loaded, no PACS is contacted) plus ``extra_checks``; ``only``: just
    those names (``READY_CHECKS`` for ``/readyz``).

    Built in: the configured model folders are readable, the audit log and the PACS outbox folders
    are writable; the outbox's pending batch count is reported (pending batches are not a failure).
    Details name settings, never paths (the routes answer without login).
    """
    checks: dict[str, Check] = {
        "model_dir": lambda: _readable_dir(config.models.model_dir, "models.model_dir"),
        "experts_dir": lambda: _readable_dir(config.models.experts_dir, "models.experts_dir"),
        "audit_log": lambda: _writable(config.audit.log_path, "audit.log_path"),
    }
    if config.pacs.enabled:
        checks["pacs_outbox"] = lambda: _outbox_state(config.pacs.outbox_dir)
    checks.update(extra_checks or {})
    if only is not None:
        checks = {name: check for name, check in checks.items() if name in only}
    results: dict[str, dict[str, Any]] = {}
    for name, check in checks.items():
        try:
            ok, detail = check()
        except OSError as exc:  # a check that cannot even look is a failed check, reported by type only
            ok, detail = False, f"{type(exc).__name__}: {exc.strerror or exc}"
        results[name] = {"ok": bool(ok), "detail": detail}
    status = "ok" if all(r["ok"] for r in results.values()) else "error"
    return HealthReport(status=status, version=_version(), checks=results)


def mount_health(fastapi_app: Any, config: AppConfig, extra_checks: dict[str, Check] | None = None) -> tuple[str, ...]:
    """Add ``GET /livez``, ``/readyz`` and ``/healthz`` to a FastAPI (or Starlette-compatible) app, also under
    ``server.root_path``. No auth: they return no PHI and no paths. Returns the paths mounted (for the login guard)."""
    from fastapi.responses import JSONResponse

    def healthz() -> JSONResponse:
        report = health_report(config, extra_checks)
        return JSONResponse(report.to_json(), status_code=200 if report.ok else 503)

    def readyz() -> JSONResponse:
        report = health_report(config, extra_checks, only=READY_CHECKS)
        body = {"status": "ready" if report.ok else "not ready", "checks": report.checks}
        return JSONResponse(body, status_code=200 if report.ok else 503)

    def livez() -> JSONResponse:
        return JSONResponse({"status": "alive", "version": _version()})

    prefix = config.server.root_path.rstrip("/")
    paths = []
    for path, route in ((LIVE_PATH, livez), (READY_PATH, readyz), (HEALTH_PATH, healthz)):
        for full in dict.fromkeys((path, prefix + path)):
            fastapi_app.add_api_route(full, route, methods=["GET"], include_in_schema=False)
            paths.append(full)
    return tuple(paths)


def create_health_app(config: AppConfig, extra_checks: dict[str, Check] | None = None) -> Any:
    """A FastAPI app serving only the health routes (a sidecar, and the Dockerfile test's start step)."""
    from fastapi import FastAPI

    api = FastAPI(title="m3 health", docs_url=None, redoc_url=None, openapi_url=None)
    mount_health(api, config, extra_checks)
    return api


def default_url(config: AppConfig, probe: str = "health") -> str:
    """Where this container's app answers ``probe`` (health | ready | live): loopback, the configured port and root path."""
    return f"http://127.0.0.1:{config.server.port}{config.server.root_path.rstrip('/')}{PROBES[probe]}"


def check_url(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """GET ``url``; ``(True, body)`` on HTTP 200, else ``(False, reason)``. Standard library only."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (loopback URL from config)
            body = response.read(65536).decode("utf-8", "replace")
            return response.status == 200, body
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(65536).decode('utf-8', 'replace')}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer from {url}: {reason}"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``m3 health [--url URL] [--timeout S] [--serve]``."""
    p = sub.add_parser("health", help="check the app's /healthz (exit 0 when healthy); --serve runs a health-only server")
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m app.health``: the same as ``m3 health``, without importing the rest of m3."""
    parser = argparse.ArgumentParser(prog="python -m app.health", description="Check or serve m3's /healthz.")
    _add_arguments(parser)
    return _run(parser.parse_args(argv))


# --- private helpers ---------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="health URL (default: loopback, the configured port and root path, /healthz)")
    p.add_argument("--probe", choices=sorted(PROBES), default="health",
                   help="which route the default URL checks: health (/healthz), ready (/readyz) or live (/livez)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.add_argument("--config", help="config file (default $M3_CONFIG)")
    p.add_argument("--serve", action="store_true", help="serve /healthz alone instead of checking it")
    p.add_argument("--host", help="with --serve: bind address (default from config)")
    p.add_argument("--port", type=int, help="with --serve: port (default from config)")


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"m3 health: error: {exc}", file=sys.stderr)
        return 1
    if args.serve:
        import uvicorn

        uvicorn.run(
            create_health_app(config),
            host=args.host or config.server.host,
            port=args.port or config.server.port,
            log_level="warning",
        )
        return 0
    ok, detail = check_url(args.url or default_url(config, args.probe), args.timeout)
    print(("healthy: " if ok else "unhealthy: ") + detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _readable_dir(path: Path | None, setting: str) -> tuple[bool, str]:
    if path is None:
        return True, "embedded bundle"
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        return False, f"{setting} is not a readable folder; mount it (read-only is fine)"
    return True, "readable"


def _writable(path: Path, setting: str) -> tuple[bool, str]:
    """Whether this user can append to ``path`` (the file if it exists, else the nearest existing folder above)."""
    if path.exists():
        target = path
    else:
        folder = path.parent if str(path.parent) else Path(".")
        target = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if target is not path and not target.is_dir() or not os.access(target, os.W_OK):  # a file where a folder must be
        return False, f"{setting} is not writable by this user; mount a writable volume there"
    return True, "writable"


def _outbox_state(outbox: Path) -> tuple[bool, str]:
    ok, detail = _writable(outbox / "x", "pacs.outbox_dir")
    pending = sum(1 for p in outbox.iterdir() if p.is_dir()) if outbox.is_dir() else 0
    return ok, f"{pending} batch(es) waiting for the PACS" if ok else detail


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("m3")
    except PackageNotFoundError:
        return "source"


if __name__ == "__main__":
    sys.exit(main())
