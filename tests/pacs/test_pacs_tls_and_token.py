"""DICOMweb behind mutual TLS and a bearer token, against real Orthanc instances: one behind a TLS endpoint that
requires a client certificate from the hospital CA, and one whose Lua filter lets in only requests carrying m3's
bearer token. Each TLS failure an admin can cause is reported naming TLS and what to fix."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import logging
import selectors
import socket
import ssl
import tempfile
import threading
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient

from app.config import PacsConfig
from app.pacs import PacsClient, PacsError, PacsTlsError

pytestmark = pytest.mark.orthanc
TOKEN = "m3-site-token-4f9c2e"


class TlsFront:
    """A TLS endpoint on ``localhost`` that requires a client certificate signed by ``ca`` and relays each connection
    to a plain HTTP port (Python's ssl, i.e. OpenSSL, one thread per connection): the hospital's TLS front of its PACS.
    Like nginx it lingers after a refused handshake, so the client reads the TLS alert. (Debian 12's Orthanc crashes
    on its own HTTPS, so this stands in for its SslVerifyPeers.)"""

    def __init__(self, backend_port: int, server_pem: Path, ca: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(server_pem)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        raw = conn.dup()  # ssl closes its socket when the handshake fails; this one lingers
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):  # the alert is sent; read what the client still sends, then close
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(65536):
                    pass
            raw.close()
            return
        raw.close()
        with tls, socket.create_connection(("127.0.0.1", self.backend_port)) as backend, selectors.DefaultSelector() as sel:
            sel.register(tls, selectors.EVENT_READ, backend)
            sel.register(backend, selectors.EVENT_READ, tls)
            with contextlib.suppress(OSError):
                while True:
                    for key, _ in sel.select(timeout=10):
                        data = key.fileobj.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                        while key.fileobj is tls and tls.pending():  # records already decrypted
                            key.data.sendall(tls.recv(65536))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def tls_pacs(orthanc_server, tmp_path_factory, tls_files, make_study):
    """An Orthanc behind a TLS front on ``localhost`` that requires a client certificate signed by the hospital CA,
    holding one CT study: yields its https DICOMweb URL."""
    with orthanc_server(tmp_path_factory.mktemp("orthanc-tls")) as server:
        study = make_study("PAT-TLS-1", "TLS^TINA", "ACC-TLS-1", "20220808", "CT", "CT TLS", seed=31)
        assert len(DICOMwebClient(server.dicomweb_url).store_instances(study.datasets).ReferencedSOPSequence) == 6
        front = TlsFront(server.http_port, tls_files.server, tls_files.ca)
        try:
            yield f"https://localhost:{front.port}/dicom-web"
        finally:
            front.close()


@pytest.fixture
def mtls_config(tls_pacs, tls_files, tmp_path) -> PacsConfig:
    return PacsConfig(url=tls_pacs, ca_bundle=tls_files.ca, client_cert=tls_files.client_cert,
                      client_key=tls_files.client_key, retries=2, backoff_s=0.05, timeout_s=10, outbox_dir=tmp_path / "outbox")


def test_with_m3s_client_certificate_search_and_load_succeed_over_mutual_tls(mtls_config, tmp_path, monkeypatch):
    assert mtls_config.url.startswith("https://localhost:")
    client = PacsClient(mtls_config)
    [row] = client.search(patient_id="PAT-TLS-1")
    assert (row.accession, row.n_instances) == ("ACC-TLS-1", 6)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    study = client.load(row.study_uid)
    assert study.series[0].volume.shape == (32, 32, 6) and study.uid != row.study_uid
    assert not list(tmp_path.glob("m3-pacs-*"))


@pytest.mark.parametrize("client_files", ["none", "from another CA"])
def test_without_a_trusted_client_certificate_the_refusal_names_tls_and_the_client_certificate(mtls_config, tls_files, client_files,
                                                                                                caplog):
    caplog.set_level(logging.DEBUG)
    if client_files == "none":
        config = dataclasses.replace(mtls_config, client_cert=None, client_key=None)
    else:
        config = dataclasses.replace(mtls_config, client_cert=tls_files.stranger_cert, client_key=tls_files.stranger_key)
    with pytest.raises(PacsTlsError, match=r"searching the PACS failed: the TLS connection to https://localhost:\d+/dicom-web "
                                           r"was refused: the PACS refused m3's client certificate.*client_cert") as err:
        PacsClient(config).search(patient_id="PAT-TLS-1")
    assert "unreachable" not in str(err.value) and "PAT-TLS-1" not in str(err.value)
    assert "PAT-TLS-1" not in caplog.text  # the request URL (with the query) is in no log line


def test_a_pacs_certificate_from_an_unknown_ca_is_named_as_a_tls_problem(mtls_config):
    with pytest.raises(PacsTlsError, match=r"TLS connection .* refused: the PACS's certificate is not signed by a trusted CA; "
                                           r"set \[pacs\] ca_bundle") as err:
        PacsClient(dataclasses.replace(mtls_config, ca_bundle=None)).search(accession="ACC-TLS-1")
    assert "ACC-TLS-1" not in str(err.value)


def test_a_host_name_missing_from_the_pacs_certificate_is_named_as_a_tls_problem(mtls_config):
    by_address = mtls_config.url.replace("localhost", "127.0.0.1")  # the certificate names localhost only
    with pytest.raises(PacsTlsError, match=r"certificate does not name the host in \[pacs\] url \(127\.0\.0\.1\)"):
        PacsClient(dataclasses.replace(mtls_config, url=by_address)).search(patient_id="PAT-TLS-1")


# --- bearer token ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_orthanc(orthanc_server, tmp_path_factory, make_study):
    """An Orthanc whose HTTP filter (Lua) admits only ``Authorization: Bearer TOKEN``."""
    folder = tmp_path_factory.mktemp("orthanc-token")
    (folder / "bearer.lua").write_text(
        "function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)\n"
        f"  return httpHeaders['authorization'] == 'Bearer {TOKEN}'\n"
        "end\n")
    with orthanc_server(folder, settings={"LuaScripts": [str(folder / "bearer.lua")]}) as server:
        web = DICOMwebClient(server.dicomweb_url, headers={"Authorization": f"Bearer {TOKEN}"})
        web.store_instances(make_study("PAT-TOK-1", "TOKEN^TOM", "ACC-TOK-1", "20220909", "CT", "CT token", seed=41).datasets)
        yield server


def test_the_bearer_token_reaches_the_pacs_and_a_wrong_one_is_refused_naming_the_token(token_orthanc, tmp_path):
    config = PacsConfig(url=token_orthanc.dicomweb_url, token=TOKEN, retries=0, outbox_dir=tmp_path / "outbox")
    [row] = PacsClient(config).search(patient_id="PAT-TOK-1")
    assert row.accession == "ACC-TOK-1"
    with pytest.raises(PacsError, match=r"answered 403 .*refused m3's credentials; ask the admin to check \$M3_PACS_TOKEN") as err:
        PacsClient(dataclasses.replace(config, token="expired-token")).search(patient_id="PAT-TOK-1")
    assert err.value.status == 403 and "expired-token" not in str(err.value) and "PAT-TOK-1" not in str(err.value)
    with pytest.raises(PacsError, match=r"answered 403 .*m3 sent none"):
        PacsClient(dataclasses.replace(config, token="")).search(patient_id="PAT-TOK-1")


def test_a_401_for_a_bearer_token_says_which_setting_to_check(tmp_path):
    """A token server that answers 401 Unauthorized (as OAuth resource servers do) to m3's header."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = PacsConfig(url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web", token="wrong-token", retries=0,
                            outbox_dir=tmp_path / "outbox")
        with pytest.raises(PacsError, match=r"answered 401 Unauthorized; the PACS refused m3's credentials; .*\$M3_PACS_TOKEN") as err:
            PacsClient(config).search(accession="ACC-1")
    finally:
        server.shutdown()
    assert seen == ["Bearer wrong-token"] and err.value.status == 401
