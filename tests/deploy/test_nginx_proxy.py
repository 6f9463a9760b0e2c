"""docs/nginx/m3.conf, the reverse-proxy configuration docs/deploy.md shows, run as written (its ports, certificate,
upstream and password file substituted) by Debian's nginx, unprivileged, in front of ``m3 serve`` with
``server.root_path = "/m3"``: TLS with a self-signed certificate, the probes under /m3, single sign-on with redirect
URIs under the prefix, a proxy-header login whose user nginx itself signed in, an upload of a few MB, event streams
that are not held back, plain http sent to https."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from localhost import free_port, stop_process
from oidc_provider import User, run_provider, sign_in_at_provider

from app.audit import AuditLog

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "docs" / "nginx" / "m3.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx; `make system-deps`)")
HTTP_PASSWORD = "correct horse battery"


# --- what the test runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    """A private folder for nginx and m3 the unprivileged nginx can read (pytest's own tmp folders are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="m3-nginx-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def certificate(workdir):
    """A self-signed certificate for localhost (cryptography): (certificate path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = workdir / "m3.crt", workdir / "m3.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


@pytest.fixture(scope="module")
def provider():
    with run_provider([User(sub="u-grey", claims={"preferred_username": "dr.grey"})]) as running:
        yield running


@contextlib.contextmanager
def m3_serve(state: Path, **env: str):
    """``m3 serve`` in a subprocess under the /m3 prefix with ``env`` (``M3_*`` settings); yields its port."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("M3_")}
    full.update(M3_SERVER_PORT=str(port), M3_SERVER_ROOT_PATH="/m3", M3_AUDIT_LOG_PATH=str(state / "audit.jsonl"),
                M3_PACS_OUTBOX_DIR=str(state / "outbox"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    with (state / "serve.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "app.main", "serve"], cwd=ROOT, env=full, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/m3/livez", timeout=2).status_code == 200, server,
                  state / "serve.log")
        yield port
    finally:
        stop_process(server)


@contextlib.contextmanager
def nginx(folder: Path, app_port: int, certificate: tuple[Path, Path], htpasswd: Path | None = None):
    """Debian's nginx running docs/nginx/m3.conf with free ports, the certificate, ``app_port`` as upstream and, when
    ``htpasswd`` is given, its proxy-header login lines switched on. Yields ``(https_port, http_port)``; runs as
    ``nobody`` when the tests run as root, with its pid, logs and temporary files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    https_port, http_port = free_port(), free_port()
    crt, key = certificate
    site = _substitute(CONF.read_text(), {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "/etc/nginx/tls/m3.crt": str(crt), "/etc/nginx/tls/m3.key": str(key),
        "proxy_pass http://127.0.0.1:7860;": f"proxy_pass http://127.0.0.1:{app_port};",
        **({"# auth_basic \"m3\";": "auth_basic \"m3\";",
            "# auth_basic_user_file /etc/nginx/m3.htpasswd;": f"auth_basic_user_file {htpasswd};"} if htpasswd else {}),
    })
    (folder / "m3.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n    {temp}\n    include {folder / 'm3.conf'};\n}}\n")
    unprivileged = {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}
    if unprivileged:
        for path in (folder.parent, *folder.parent.rglob("*")):
            shutil.chown(path, "nobody", "nogroup")
    command = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, **unprivileged)
    assert checked.returncode == 0, checked.stderr
    proxy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **unprivileged)
    try:
        _wait_for(lambda: httpx.get(f"http://127.0.0.1:{http_port}/", timeout=2).status_code == 301, proxy,
                  folder / "error.log")
        yield https_port, http_port
    finally:
        stop_process(proxy)


def _substitute(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced; each must occur exactly once (the documented file is what is tested)."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"docs/nginx/m3.conf should contain {old!r} once"
        text = text.replace(old, new)
    return text


def _wait_for(ready, process: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:] if log.exists() else "exited"
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready in {timeout_s} s: {log.read_text()[-3000:] if log.exists() else ''}")


def _browser(certificate, **kwargs) -> httpx.Client:
    """An https client that trusts only the test's self-signed certificate."""
    return httpx.Client(verify=ssl.create_default_context(cafile=str(certificate[0])), timeout=30, **kwargs)


# --- single sign-on through the proxy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sso_site(workdir, certificate, provider):
    """m3 with OIDC sign-in behind nginx: ``(https base URL, http port, m3's state folder)``."""
    state = workdir / "sso-state"
    with m3_serve(state, M3_AUTH_OIDC_ISSUER=provider.issuer, M3_AUTH_OIDC_CLIENT_ID="m3",
                  M3_OIDC_CLIENT_SECRET="m3-client-secret") as app_port:
        with nginx(workdir / "sso-nginx", app_port, certificate) as (https_port, http_port):
            yield f"https://localhost:{https_port}", http_port, state


def test_the_probes_answer_under_m3_through_the_proxy_without_login_and_show_no_paths(sso_site, certificate, workdir):
    base, _, _ = sso_site
    with _browser(certificate) as client:
        assert client.get(f"{base}/m3/livez").json()["status"] == "alive"
        ready = client.get(f"{base}/m3/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        for path in ("/m3/livez", "/m3/readyz", "/m3/healthz"):
            assert str(workdir) not in client.get(f"{base}{path}").text
        assert client.get(f"{base}/m3/config").status_code == 401  # the rest needs a session


def test_plain_http_is_sent_to_https(sso_site):
    _, http_port, _ = sso_site
    moved = httpx.get(f"http://127.0.0.1:{http_port}/m3/?x=1", timeout=10)
    assert moved.status_code == 301 and moved.headers["location"] == "https://127.0.0.1/m3/?x=1"


def test_single_sign_on_through_the_proxy_uploads_streams_and_signs_out_under_m3(sso_site, certificate, provider):
    base, _, state = sso_site
    with _browser(certificate) as browser:
        page = browser.get(f"{base}/m3", follow_redirects=True)  # /m3 → /m3/ → /m3/oidc/login → the provider
        asked = parse_qs(urlsplit(str(page.url)).query)
        assert asked["redirect_uri"] == [f"{base}/m3/oidc/callback"]  # https and the prefix, as the browser sees them
        app_page = sign_in_at_provider(browser, page, "u-grey")
        assert app_page.status_code == 200 and str(app_page.url) == f"{base}/m3/"
        assert browser.get(f"{base}/m3/gradio_api/user").json() == "dr.grey"
        assert browser.get(f"{base}/m3/config").json()["root"] == f"{base}/m3"  # the page loads its parts from here
        viewer = browser.get(f"{base}/m3/m3/viewer.js")  # the browser viewer, relative to the page
        assert viewer.status_code == 200 and "javascript" in viewer.headers["content-type"]

        noise = os.urandom(5 * 2**20)  # past nginx's default 1 MB body limit
        uploaded = browser.post(f"{base}/m3/gradio_api/upload", files={"files": ("noise.bin", noise)})
        assert uploaded.status_code == 200, uploaded.text[:300]
        [stored] = uploaded.json()
        assert Path(stored).stat().st_size == len(noise)
        Path(stored).unlink()  # the stopped server's upload cache is not swept

        # Gradio's heartbeat sends one event, then nothing for 15 s: a buffering proxy would hold it back
        started = time.monotonic()
        with browser.stream("GET", f"{base}/m3/gradio_api/heartbeat/nginx-test", timeout=10) as stream:
            first = next(stream.iter_text())
        assert first.startswith("data: ALIVE") and time.monotonic() - started < 10

        at_provider = browser.get(f"{base}/m3/logout", follow_redirects=True)
        ended = parse_qs(urlsplit(str(at_provider.url)).query)
        assert ended["post_logout_redirect_uri"] == [f"{base}/m3/oidc/signed-out"]
        back = browser.post(f"{provider.issuer}/oauth2/end_session/confirm",
                            data={"redirect_uri": ended["post_logout_redirect_uri"][0]}, follow_redirects=True)
        assert "You are signed out of m3" in back.text
        assert browser.get(f"{base}/m3/config").status_code == 401
    events = [(e["event"], e.get("user"), e.get("method")) for e in AuditLog(state / "audit.jsonl").read()]
    assert ("login", "dr.grey", "oidc") in events and ("logout", "dr.grey", None) in events


# --- proxy-header login: nginx signs the user in --------------------------------------------------------------------


def test_a_user_nginx_signed_in_reaches_m3_through_the_header_and_a_forged_header_does_not(workdir, certificate):
    htpasswd = workdir / "m3.htpasswd"
    htpasswd.write_text(f"dr.grey:{{PLAIN}}{HTTP_PASSWORD}\n")  # nginx reads {PLAIN}; a site uses hashed entries
    state = workdir / "header-state"
    with m3_serve(state, M3_AUTH_TRUSTED_HEADER="X-Remote-User") as app_port:
        with nginx(workdir / "header-nginx", app_port, certificate, htpasswd) as (https_port, _):
            base = f"https://localhost:{https_port}"
            with _browser(certificate) as anonymous:
                refused = anonymous.get(f"{base}/m3/config", headers={"X-Remote-User": "dr.grey"})
                assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
                assert anonymous.get(f"{base}/m3/config", auth=("dr.grey", "wrong password")).status_code == 401
            with _browser(certificate, auth=("dr.grey", HTTP_PASSWORD)) as browser:
                assert browser.get(f"{base}/m3/").status_code == 200
                assert browser.get(f"{base}/m3/config").status_code == 200
                # a header the browser sends itself is replaced by the user nginx signed in
                assert browser.get(f"{base}/m3/gradio_api/user", headers={"X-Remote-User": "admin"}).json() == "dr.grey"
    [login] = [e for e in AuditLog(state / "audit.jsonl").read() if e["event"] == "login"]
    assert login["user"] == "dr.grey" and login["method"] == "proxy header" and login["client"] == "127.0.0.1"


def test_deploy_md_shows_the_tested_nginx_configuration_verbatim():
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, flags=re.S)
    assert CONF.read_text() in blocks, "docs/deploy.md's nginx block must be docs/nginx/m3.conf as it is"
