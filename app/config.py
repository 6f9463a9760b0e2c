"""The app's settings: one TOML file plus environment variables, read into one ``AppConfig``.

Precedence, lowest first: the defaults below → the config file (``--config`` or ``$M3_CONFIG``) →
environment variables ``M3_<SECTION>_<FIELD>`` (``M3_SERVER_PORT=8080``, ``M3_PACS_WRITEBACK_ENABLED=1``)
→ command-line flags the caller applies with ``dataclasses.replace``. A container sets everything with
``-e`` flags or one mounted file; both are checked here, before anything starts. Secrets (the PACS
password, the OIDC client secret) come only from the environment, never from the file, so the file can be shared
read-only.

Example file (every key optional)::

    [server]
    host = "0.0.0.0"
    port = 7860
    [models]
    model_dir = "/models/vlm"
    experts_dir = "/models/experts"
    device = "cuda"          # auto | cpu | cuda | cuda:N
    dtype = "bfloat16"       # auto | float32 | bfloat16 | float16
    [auth]
    users_file = "/etc/m3/users.toml"
    trusted_proxies = ["127.0.0.1/32", "::1/128"]
    idle_logout_min = 30
    # or single sign-on instead of users_file (the secret from $M3_OIDC_CLIENT_SECRET):
    # oidc_issuer = "https://login.hospital.org/realms/staff"
    # oidc_client_id = "m3"
    [pacs]
    url = "http://pacs.example.org:8042/dicom-web"
    writeback_enabled = true
    [limits]
    max_upload_mb = 1024
    [audit]
    log_path = "/var/lib/m3/audit.jsonl"
    [routing]                # the local model first, a large one when it is unsure (key from $M3_LARGE_LM_API_KEY)
    large_lm_url = "http://gpu-node:8000/v1"
    large_lm_model = "large-vlm"
    min_token_confidence = 0.6

Unknown sections, keys and ``M3_*`` variables stop the start, naming the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import ssl
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from data.errors import M3Error
from vlm.device import DeviceError, check_placement_names
from vlm.routing.config import RoutingConfig, RoutingError

__all__ = [
    "AppConfig",
    "ServerConfig",
    "ModelsConfig",
    "AuthConfig",
    "PacsConfig",
    "LimitsConfig",
    "AuditConfig",
    "RoutingConfig",
    "ConfigError",
    "load_config",
    "env_variable_names",
    "CONFIG_ENV",
    "ENV_PREFIX",
    "OTHER_ENV",
    "EXPORT_EXPERTS_FOLDER",
]

CONFIG_ENV = "M3_CONFIG"  # path of the one config file
ENV_PREFIX = "M3_"
SECRET_ENV = {"pacs.password": "M3_PACS_PASSWORD", "models.lm_api_key": "M3_LM_API_KEY",
              "auth.oidc_client_secret": "M3_OIDC_CLIENT_SECRET", "pacs.token": "M3_PACS_TOKEN",
              "routing.large_lm_api_key": "M3_LARGE_LM_API_KEY"}  # environment only
# M3_* variables that are no setting: the config file, password logins (app.auth), the image's build argument for
# its user id (set in the environment of the Dockerfile's RUN steps)
OTHER_ENV = (CONFIG_ENV, "M3_USERS", "M3_UID")
EXPORT_EXPERTS_FOLDER = "experts"  # where `m3 export --experts` puts a build's experts (vlm.export)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_PACS_PROTOCOLS = ("dicomweb", "dimse")
# A DICOM AE title: 1-16 characters, no backslash, no leading or trailing space.
_AE_TITLE = re.compile(r"^[A-Za-z0-9_.\-](?:[A-Za-z0-9_. \-]{0,14}[A-Za-z0-9_.\-])?$")


class ConfigError(M3Error):
    """A setting that cannot be used; the message names the setting, its source and what to change."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # anything but loopback requires [auth] to be configured
    port: int = 7860
    root_path: str = ""  # URL prefix when behind a reverse proxy, e.g. "/m3"


@dataclass
class ModelsConfig:
    model_dir: Path | None = None  # VLM checkpoint folder; None = the embedded default bundle
    experts_dir: Path | None = None  # expert weights folder; None = the experts of an export at model_dir, else embedded
    embedded_experts_fallback: bool = False  # offer embedded experts a site / export folder lacks (off: only the site's)
    lm_url: str = ""  # remote OpenAI-compatible LM (vLLM, `m3 serve-lm`), e.g. http://gpu-node:8000/v1; empty = in process
    lm_model: str = ""  # the served model name at lm_url
    lm_api_key: str = field(default="", repr=False)  # only from $M3_LM_API_KEY
    device: str = "auto"  # where the in-process VLM runs: auto (CUDA when available, else cpu), cpu, cuda, cuda:N
    dtype: str = "auto"  # its precision: auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16, float16


@dataclass
class AuthConfig:
    users_file: Path | None = None  # users and password hashes (read by app.auth)
    trusted_header: str = ""  # user name header set by the hospital's reverse proxy, e.g. "X-Remote-User"
    # Reverse proxies (IPs or CIDR networks) believed for trusted_header and for X-Forwarded-For.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    state_file: Path | None = None  # sign-in counters (addresses, counts); None = login-state.json beside audit.log_path
    failures_before_delay: int = 5  # failed sign-ins per client address before each further one doubles its wait
    max_delay_s: float = 900.0  # the longest wait one address is given
    global_failures_per_minute: int = 60  # failed sign-ins per minute from all addresses without a recent sign-in
    idle_logout_min: float = 30.0  # a password or OIDC session unused this long is signed out; 0 = never
    # OpenID Connect single sign-on (app.oidc): the provider's issuer URL (discovery at ISSUER/.well-known/...)
    oidc_issuer: str = ""
    oidc_client_id: str = ""  # m3's client id at the provider
    oidc_client_secret: str = field(default="", repr=False)  # only from $M3_OIDC_CLIENT_SECRET
    oidc_scopes: tuple[str, ...] = ("openid", "profile", "email")
    oidc_username_claim: str = "preferred_username"  # the ID token claim that is the user name
    oidc_groups_claim: str = "groups"  # the ID token claim listing the user's groups or roles
    oidc_allowed_groups: tuple[str, ...] = ()  # sign in only members of one of these; empty = everyone the provider admits

    @property
    def configured(self) -> bool:
        """True when some login mechanism is set (required to bind beyond localhost)."""
        return self.users_file is not None or bool(self.trusted_header) or bool(self.oidc_issuer)

    def login_methods(self) -> list[str]:
        """The login settings that are set, as ``auth.KEY`` names (at most one may be)."""
        return [f"auth.{name}" for name in ("users_file", "trusted_header", "oidc_issuer") if getattr(self, name)]


@dataclass
class PacsConfig:
    protocol: str = "dicomweb"  # dicomweb (url) | dimse (host, port, AE titles: C-FIND / C-MOVE / C-STORE)
    url: str = ""  # DICOMweb root, e.g. http://pacs:8042/dicom-web; empty = no PACS
    writeback_enabled: bool = False  # STOW of SR/SEG back to the PACS; off until an admin turns it on
    username: str = ""  # HTTP basic auth user; the password only from $M3_PACS_PASSWORD
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)  # HTTP bearer token (instead of basic auth), only from $M3_PACS_TOKEN
    timeout_s: float = 30.0  # per HTTP request / DIMSE message
    retries: int = 3  # extra attempts for reads (GET, C-FIND, C-MOVE) and refused connections
    backoff_s: float = 0.5  # first retry delay; doubles each attempt
    outbox_dir: Path = Path("var/outbox")  # write-back batches wait here until the PACS has them
    outbox_max_age_days: float = 14.0  # older batches are never sent (stale results); 0 = no expiry
    ca_bundle: Path | None = None  # TLS trust store (PEM) for an https PACS with a hospital CA
    client_cert: Path | None = None  # mutual TLS: m3's client certificate (PEM) ...
    client_key: Path | None = None  # ... and its private key (PEM, unencrypted, readable by the service user only)
    host: str = ""  # DIMSE: the PACS's host name or address; empty = no PACS
    port: int = 104  # DIMSE: the PACS's DICOM port
    called_ae_title: str = ""  # DIMSE: the PACS's AE title
    ae_title: str = "M3"  # DIMSE: m3's own AE title (registered on the PACS)
    move_ae_title: str = ""  # DIMSE: the C-MOVE destination AE title the PACS sends to; empty = ae_title
    move_port: int = 11112  # DIMSE: where m3 listens for the images of a C-MOVE (the PACS must reach it)

    @property
    def enabled(self) -> bool:
        return bool(self.host) if self.protocol == "dimse" else bool(self.url)

    def check(self, source: str = "defaults") -> None:
        """Raise ``ConfigError`` for PACS settings that cannot work: unknown protocol, an incomplete or doubled
        login, TLS files that are missing, unreadable or do not pair, DIMSE ports and AE titles out of range."""
        if self.protocol not in _PACS_PROTOCOLS:
            raise ConfigError(f"pacs.protocol must be one of {', '.join(_PACS_PROTOCOLS)}, got {self.protocol!r}"
                              f"{_closest(self.protocol, _PACS_PROTOCOLS)} (from {source}).")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ConfigError(
                "pacs.retries and pacs.backoff_s must be >= 0 and pacs.timeout_s > 0, got "
                f"{self.retries}, {self.backoff_s}, {self.timeout_s}."
            )
        if not self.outbox_max_age_days >= 0:
            raise ConfigError(f"pacs.outbox_max_age_days must be >= 0 (0 = no expiry), got {self.outbox_max_age_days} "
                              f"(from {source}).")
        if self.writeback_enabled and not self.enabled:
            where = "pacs.host" if self.protocol == "dimse" else "pacs.url"
            raise ConfigError(f"pacs.writeback_enabled is true but {where} is empty; set the PACS address or turn write-back off.")
        if self.protocol == "dimse":
            self._check_dimse(source)
        else:
            self._check_dicomweb(source)

    def _check_dicomweb(self, source: str) -> None:
        set_dimse = [k for k in ("host", "called_ae_title") if getattr(self, k)]
        if set_dimse:
            raise ConfigError(f"pacs.{set_dimse[0]} is a DIMSE setting but pacs.protocol is dicomweb (from {source}); "
                              "set pacs.protocol = \"dimse\" or unset it.")
        if self.url:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError(
                    f"pacs.url must be an http(s) DICOMweb root like http://pacs:8042/dicom-web, got "
                    f"{self.url!r} (from {source}); fix it or leave it empty to run without a PACS."
                )
        if self.url and self.username and not self.password:
            raise ConfigError(f"pacs.username is set ({self.username!r}) but $M3_PACS_PASSWORD is empty (from {source}); "
                              "set the password in the environment, or unset pacs.username.")
        if self.url and self.password and not self.username:
            raise ConfigError(f"$M3_PACS_PASSWORD is set but pacs.username is empty (from {source}); set the user name "
                              "the PACS knows m3 by, or unset the password.")
        if self.username and self.token:
            raise ConfigError(f"both basic auth (pacs.username) and a bearer token ($M3_PACS_TOKEN) are set (from {source}): "
                              "one login method only; unset one of them.")
        if bool(self.client_cert) != bool(self.client_key):
            given, missing = ("client_cert", "client_key") if self.client_cert else ("client_key", "client_cert")
            raise ConfigError(f"pacs.{given} is set but pacs.{missing} is not (from {source}): mutual TLS needs m3's "
                              "certificate and its private key; set both or neither.")
        tls = [k for k in ("ca_bundle", "client_cert") if getattr(self, k)]
        if tls and self.url and urlparse(self.url).scheme != "https":
            raise ConfigError(f"pacs.{tls[0]} is set but pacs.url is not https ({self.url}, from {source}); TLS settings "
                              "apply only to an https:// PACS URL.")
        for key in ("ca_bundle", "client_cert", "client_key"):
            path = getattr(self, key)
            if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
                state = "is not readable by this user" if path.is_file() else "does not exist"
                raise ConfigError(f"pacs.{key} must be a readable PEM file, got {path}, which {state} (from {source}); "
                                  "mount it (read-only) or fix the path.")
        try:  # the standard ssl module parses them as every connection will
            context = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)
        except ssl.SSLError as exc:
            raise ConfigError(f"pacs.ca_bundle {self.ca_bundle} holds no usable CA certificate ({exc.reason}); "
                              "expected PEM certificates (-----BEGIN CERTIFICATE-----).") from None
        if self.client_cert:
            try:
                context.load_cert_chain(self.client_cert, self.client_key, password=lambda: b"")
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"pacs.client_cert {self.client_cert} and pacs.client_key {self.client_key} cannot be used together "
                    f"({exc.reason}); expected a PEM certificate and its unencrypted PEM private key."
                ) from None

    def _check_dimse(self, source: str) -> None:
        set_web = [k for k in ("url", "username", "token", "ca_bundle", "client_cert", "client_key") if getattr(self, k)]
        if set_web:
            raise ConfigError(f"pacs.{set_web[0]} is a DICOMweb setting but pacs.protocol is dimse (from {source}); "
                              "DIMSE logs in by AE title only. Unset it, or set pacs.protocol = \"dicomweb\".")
        for key in ("port", "move_port"):
            if not 0 < getattr(self, key) < 65536:
                raise ConfigError(f"pacs.{key} must be 1-65535, got {getattr(self, key)} (from {source}).")
        if self.host and not self.called_ae_title:
            raise ConfigError(f"pacs.called_ae_title must name the PACS's AE title when pacs.protocol is dimse "
                              f"(from {source}); ask the PACS administrator for it.")
        for key in ("ae_title", "called_ae_title", "move_ae_title"):
            title = getattr(self, key)
            if (title or key == "ae_title") and not _AE_TITLE.match(title):
                raise ConfigError(f"pacs.{key} must be 1-16 characters, letters, digits, spaces or _-. without "
                                  f"leading or trailing spaces, got {title!r} (from {source}).")


@dataclass
class LimitsConfig:
    max_upload_mb: int = 2048
    max_files: int = 5000
    concurrency: int = 1  # simultaneous model calls per model (Gradio queue)
    upload_cache_s: int = 300  # raw uploads (may hold PHI) are removed from Gradio's upload cache this long after upload


@dataclass
class AuditConfig:
    log_path: Path = Path("var/audit.jsonl")  # JSON lines (hash-chained), one per event, never PHI
    max_mb: float = 100.0  # the log is rotated (audit.jsonl.1, .2, ...) before it grows past this
    keep_files: int = 20  # rotated files kept; older ones are deleted


@dataclass
class AppConfig:
    """Everything the app needs to start. Sections mirror the config file's tables."""

    server: ServerConfig = field(default_factory=ServerConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    pacs: PacsConfig = field(default_factory=PacsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)  # local model first, a large one when needed (vlm.routing)
    source: str = "defaults"  # where the settings came from (file path and/or "env"), for the banner

    @property
    def login_state_file(self) -> Path:
        """Where sign-in rate-limit counters are kept: ``auth.state_file``, else beside the audit log."""
        return self.auth.state_file or self.audit.log_path.parent / "login-state.json"

    def experts_source(self) -> tuple[Path | None, str]:
        """``(folder, label)`` of the experts to serve: ``models.experts_dir`` ("site folder"), else the experts folder
        of an export at ``models.model_dir`` ("export"), else ``(None, "embedded bundle")``."""
        if self.models.experts_dir is not None:
            return self.models.experts_dir, "site folder"
        if self.models.model_dir is not None and (self.models.model_dir / EXPORT_EXPERTS_FOLDER).is_dir():
            return self.models.model_dir / EXPORT_EXPERTS_FOLDER, "export"
        return None, "embedded bundle"

    def validate(self) -> "AppConfig":
        """Raise ``ConfigError`` for settings that cannot work; returns ``self``."""
        if not 0 < self.server.port < 65536:
            raise ConfigError(f"server.port must be 1-65535, got {self.server.port} (from {self.source}).")
        self.pacs.check(self.source)
        if self.models.lm_url and (urlparse(self.models.lm_url).scheme not in ("http", "https") or not self.models.lm_model):
            raise ConfigError(
                f"models.lm_url must be an http(s) API root like http://gpu-node:8000/v1 with models.lm_model naming the "
                f"served model, got {self.models.lm_url!r} / {self.models.lm_model!r} (from {self.source})."
            )
        try:
            check_placement_names(self.models.device, self.models.dtype)
        except DeviceError as exc:
            raise ConfigError(f"{str(exc).rstrip('.')} (from {self.source}).") from None
        for proxy in self.auth.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(
                    f"auth.trusted_proxies must be IP addresses or CIDR networks like '10.0.0.0/8', got {proxy!r} "
                    f"(from {self.source})."
                ) from None
        if self.auth.trusted_header and not self.auth.trusted_proxies:
            raise ConfigError(
                f"auth.trusted_proxies must list the reverse proxy that sets auth.trusted_header "
                f"({self.auth.trusted_header}), got an empty list (from {self.source})."
            )
        for name in ("failures_before_delay", "global_failures_per_minute"):
            if getattr(self.auth, name) < 1:
                raise ConfigError(f"auth.{name} must be >= 1, got {getattr(self.auth, name)}.")
        if not self.auth.max_delay_s >= 1:
            raise ConfigError(f"auth.max_delay_s must be >= 1, got {self.auth.max_delay_s}.")
        methods = self.auth.login_methods()
        if len(methods) > 1:
            raise ConfigError(
                f"{' and '.join(methods)} are {'both' if len(methods) == 2 else 'all'} set (from {self.source}): one "
                "login method only. Expected the hospital proxy's header (trusted_header), single sign-on (oidc_issuer) "
                "or m3's own passwords (users_file); unset all but one."
            )
        if self.auth.oidc_issuer:
            self._validate_oidc()
        if not self.auth.idle_logout_min >= 0:
            raise ConfigError(f"auth.idle_logout_min must be >= 0 (0 = never), got {self.auth.idle_logout_min}.")
        if not self.audit.max_mb > 0 or self.audit.keep_files < 0:
            raise ConfigError(f"audit.max_mb must be > 0 and audit.keep_files >= 0, got {self.audit.max_mb}, "
                              f"{self.audit.keep_files}.")
        for name in ("max_upload_mb", "max_files", "concurrency"):
            if getattr(self.limits, name) < 1:
                raise ConfigError(f"limits.{name} must be >= 1, got {getattr(self.limits, name)}.")
        if self.limits.upload_cache_s < 60:
            raise ConfigError(f"limits.upload_cache_s must be >= 60 (longer than the slowest ingest), got "
                              f"{self.limits.upload_cache_s} (from {self.source}).")
        try:
            self.routing.check()
        except RoutingError as exc:
            raise ConfigError(f"{str(exc).rstrip('.')} (from {self.source}).") from None
        for path, what in ((self.models.model_dir, "models.model_dir"), (self.models.experts_dir, "models.experts_dir")):
            if path is not None and not path.is_dir():
                raise ConfigError(f"{what} must be an existing folder, got {path}; mount it or unset it to use the embedded bundle.")
        return self

    def _validate_oidc(self) -> None:
        auth = self.auth
        parsed = urlparse(auth.oidc_issuer)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
            raise ConfigError(f"auth.oidc_issuer must be the provider's issuer URL like "
                              f"https://login.hospital.org/realms/staff, got {auth.oidc_issuer!r} (from {self.source}).")
        missing = [name for name, value in (("auth.oidc_client_id", auth.oidc_client_id),
                                            (f"${SECRET_ENV['auth.oidc_client_secret']}", auth.oidc_client_secret)) if not value]
        if missing:
            raise ConfigError(f"auth.oidc_issuer is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                              f"empty (from {self.source}); set the client id and secret m3 was registered with at the "
                              "provider.")
        if "openid" not in auth.oidc_scopes:
            raise ConfigError(f"auth.oidc_scopes must include \"openid\", got {list(auth.oidc_scopes)} (from {self.source}).")
        for name in ("oidc_username_claim", "oidc_groups_claim"):
            if not getattr(auth, name):
                raise ConfigError(f"auth.{name} must name an ID token claim, got an empty value (from {self.source}).")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read defaults → file → environment into a validated ``AppConfig``.

    path: the TOML file; ``None`` = ``$M3_CONFIG`` if set, else no file. env: defaults to ``os.environ``.
    Raises ``ConfigError`` for a missing file, unknown keys, wrong types or impossible values.
    """
    env = os.environ if env is None else env
    path = path if path is not None else env.get(CONFIG_ENV) or None
    config = AppConfig()
    sources: list[str] = []
    if path is not None:
        _apply(config, _read_toml(Path(path)), origin=str(path))
        sources.append(str(path))
    used_env = _apply_env(config, env)
    if used_env:
        sources.append("env")
    config.source = " + ".join(sources) or "defaults"
    return config.validate()


def env_variable_names() -> dict[str, str]:
    """``"section.field" → "M3_SECTION_FIELD"`` for every setting (the table in docs/deploy.md)."""
    names = {}
    for section in dataclasses.fields(AppConfig):
        if section.name == "source":
            continue
        for f in dataclasses.fields(section.default_factory()):
            key = f"{section.name}.{f.name}"
            names[key] = SECRET_ENV.get(key, f"{ENV_PREFIX}{section.name}_{f.name}".upper())
    return names


# --- private helpers ---------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError(f"reading {path} needs Python >= 3.11 (tomllib); use environment variables instead.") from None
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; mount it there or unset ${CONFIG_ENV}.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from None


def _apply(config: AppConfig, data: Mapping[str, Any], origin: str) -> None:
    sections = {f.name for f in dataclasses.fields(config)} - {"source"}
    for name, values in data.items():
        if name not in sections or not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: unknown section [{name}]{_closest(name, sections)}; "
                              f"expected one of {sorted(sections)}.")
        section = getattr(config, name)
        known = {f.name for f in dataclasses.fields(section)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown setting {name}.{key}{_closest(key, known, f'{name}.')}; "
                                  f"expected one of {sorted(known)}.")
            if f"{name}.{key}" in SECRET_ENV:
                raise ConfigError(
                    f"{origin}: {name}.{key} must not be in the config file; set ${SECRET_ENV[name + '.' + key]} instead."
                )
            setattr(section, key, _coerce(section, key, value, f"{origin}: {name}.{key}"))


def _apply_env(config: AppConfig, env: Mapping[str, str]) -> bool:
    names = env_variable_names()
    valid = set(names.values()) | set(OTHER_ENV)
    unknown = sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in valid)
    if unknown:
        raise ConfigError(
            f"environment variable ${unknown[0]} is no m3 setting{_closest(unknown[0], valid, '$')}; expected one of the "
            f"M3_* names in docs/deploy.md (app.config.env_variable_names). Fix its name or unset it"
            + (f" (also unknown: {', '.join(unknown[1:])})." if unknown[1:] else ".")
        )
    used = False
    for key, var in names.items():
        if var in env:
            section, name = key.split(".")
            setattr(getattr(config, section), name, _coerce(getattr(config, section), name, env[var], f"${var}"))
            used = True
    return used


def _closest(name: str, valid: Any, prefix: str = "") -> str:
    """`` (did you mean X?)`` for the valid name nearest ``name`` (difflib), or nothing when none is close."""
    match = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{match[0]}?)" if match else ""


def _coerce(section: Any, name: str, value: Any, where: str) -> Any:
    """``value`` (from TOML or an env string) converted to the field's declared type."""
    hint = typing.get_type_hints(type(section))[name]
    if typing.get_origin(hint) is tuple:  # a TOML list, or comma-separated text from the environment
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where} must be a list of text like [\"10.0.0.0/8\"] (comma-separated in the environment), "
                              f"got {value!r}.")
        return tuple(i.strip() for i in items if i.strip())
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    target = args[0] if args else hint
    if optional and value in ("", None):
        return None
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if target is float:
            return float(value)
        if target is Path:
            return Path(str(value)).expanduser()
        return str(value)
    except (TypeError, ValueError):
        expected = {bool: "true/false", int: "an integer", float: "a number", Path: "a path", str: "text"}[target]
        raise ConfigError(f"{where} must be {expected}, got {value!r}.") from None
