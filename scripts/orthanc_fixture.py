"""A throw-away Orthanc PACS (with its DICOMweb plugin) on free loopback ports, for tests and demos.

    with OrthancServer(tmp_dir) as pacs:
        pacs.dicomweb_url   # http://127.0.0.1:PORT/dicom-web
        pacs.dicom_port, pacs.dicom_aet   # its DICOM (DIMSE) service

``settings`` are merged into Orthanc's configuration: ``DicomAet`` and ``DicomModalities`` let it C-MOVE to a
known AE, ``LuaScripts`` can filter HTTP requests (e.g. check a bearer token). (Debian 12's Orthanc crashes on
its own HTTPS, ``SslEnabled``; the TLS tests put a TLS endpoint in front of it instead.)

Run ``python scripts/orthanc_fixture.py`` to keep one in the foreground (Ctrl-C stops it and deletes
its storage). Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (scripts/system_deps.sh).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["OrthancServer", "ORTHANC_BINARY", "DICOMWEB_PLUGIN", "orthanc_missing_reason", "free_port"]

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing_reason() -> str | None:
    """Why Orthanc cannot be started here (``None`` when it can)."""
    if not ORTHANC_BINARY.is_file():
        return f"{ORTHANC_BINARY} not found: install the Debian packages orthanc and orthanc-dicomweb (scripts/system_deps.sh)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} not found: install the Debian package orthanc-dicomweb (scripts/system_deps.sh)"
    return None


def free_port(n: int = 1) -> list[int]:
    """``n`` distinct TCP ports nobody listens on right now (the kernel picks them)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _PortTaken(Exception):
    pass


class OrthancServer:
    """An Orthanc process with its own storage under ``workdir``; loopback only, no auth."""

    def __init__(self, workdir: str | Path, ready_timeout_s: float = 20.0, settings: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.ready_timeout_s = ready_timeout_s
        self.settings = dict(settings or {})
        self.http_port = 0
        self.dicom_port = 0
        self.process: subprocess.Popen | None = None

    @property
    def dicom_aet(self) -> str:
        return self.settings.get("DicomAet", "ORTHANC")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, attempts: int = 3) -> "OrthancServer":
        """Start on fresh free ports; a port taken in between (another process) means another try."""
        reason = orthanc_missing_reason()
        if reason:
            raise RuntimeError(reason)
        for attempt in range(attempts):
            try:
                return self._start_once()
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(f"Orthanc found its ports taken {attempts} times; see {self.workdir / 'orthanc.log'}") from None
        return self

    def _start_once(self) -> "OrthancServer":
        self.http_port, self.dicom_port = free_port(2)
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "m3-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "StorageCompression": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}"},
            **self.settings,
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "wb")  # noqa: SIM115 (kept open for the process' lifetime)
        self.process = subprocess.Popen([str(ORTHANC_BINARY), str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if b"already in use" in (self.workdir / "orthanc.log").read_bytes():
                    raise _PortTaken()
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode}; see {self.workdir / 'orthanc.log'}")
            if b"Orthanc has started" in (self.workdir / "orthanc.log").read_bytes():  # HTTP and DICOM servers listen
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {self.ready_timeout_s} s; see {self.workdir / 'orthanc.log'}")

    def stop(self) -> None:
        """SIGTERM, then wait for the PID (Orthanc takes 2-3 s to close its index)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted by the kernel but never answered."""
        self._running().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._running().send_signal(signal.SIGCONT)

    def _running(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("Orthanc is not running; call start() first.")
        return self.process

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    folder = Path(tempfile.mkdtemp(prefix="m3-orthanc-"))
    server = OrthancServer(folder).start()
    print(f"Orthanc at {server.url} (DICOMweb {server.dicomweb_url}), storage {folder}; Ctrl-C to stop.")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(0)
