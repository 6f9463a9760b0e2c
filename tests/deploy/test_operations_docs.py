"""docs/operations.md as an administrator follows it: the backup, restore, upgrade and rollback commands run as
written (the `docker ...` parts replaced by what they run inside the container, /srv and the m3-state volume by
temporary folders), and every `make` command it gives is a target the Makefile runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localhost import free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.audit import AuditLog
from app.pacs_outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
IMAGE_DOCKER_RUN = re.compile(r"^docker run --rm (?:-i )?(?:(?:-v|--env-file) \S+ )*(?:--entrypoint (?P<entry>\S+) )?"
                              r"m3:\S+(?P<args>( .*)?)$")


def _blocks(heading: str) -> list[str]:
    """The ```bash blocks of the section under ``heading`` (up to the next heading of any level)."""
    text = DOC.read_text()
    start = text.index(f"\n{heading}\n")
    after = re.search(r"\n#{2,3} ", text[start + 1:])
    section = text[start: start + 1 + after.start()] if after else text[start:]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, f"docs/operations.md: no bash block under {heading!r}"
    return blocks


def _commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only and blank lines left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


class Site:
    """A host's /srv (config, users, secrets, TLS, backups) and the m3-state volume, in temporary folders; the
    container's config file is the host's /srv/m3/m3.toml with the volume's paths."""

    def __init__(self, root: Path) -> None:
        self.root, self.srv, self.state = root, root / "srv", root / "volume-m3-state"
        (self.srv / "m3" / "tls").mkdir(parents=True)
        (self.srv / "m3" / "models").mkdir()
        (self.srv / "backup").mkdir()
        self.state.mkdir(mode=0o700)
        self.port = free_port()
        self.config = self.srv / "m3" / "m3.toml"
        self.config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[auth]\nusers_file = "{self.srv}/m3/users.toml"\n'
            f'[pacs]\noutbox_dir = "{self.state}/outbox"\n'
            f'[audit]\nlog_path = "{self.state}/audit.jsonl"\n')
        (self.srv / "m3" / "users.toml").write_text('[users]\nalice = "scrypt$not-a-real-hash"\n')
        (self.srv / "m3" / "secrets.env").write_text("M3_PACS_PASSWORD=not-used-here\n")
        (self.srv / "m3" / "tls" / "hospital-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        (self.srv / "m3" / "models" / "weights.safetensors").write_bytes(b"\0" * 64)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("M3_")}
        self.env.update(M3_CONFIG=str(self.config), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def translate(self, command: str) -> str:
        """A command of the docs as it runs here: `docker exec m3 X` → X, `docker run ... m3:TAG ARGS` → the image's
        entrypoint (m3, or --entrypoint) with ARGS, `docker volume rm m3-state` → an empty volume, other container
        lifecycle commands → nothing; then /var/lib/m3 → the volume and /srv → this site's folder."""
        if command.startswith(("docker stop m3", "docker tag ", "docker build ")):
            return ":"
        if command == "docker volume rm m3-state":
            return f"rm -rf {self.state} && mkdir -m 700 {self.state}"
        if command.startswith("docker exec m3 "):
            command = command.removeprefix("docker exec m3 ")
        elif command.startswith("docker run "):
            run = IMAGE_DOCKER_RUN.match(command)
            assert run, f"docs/operations.md: a docker run this test cannot replay: {command}"
            command = f"{run['entry'] or 'm3'}{run['args']}"
        assert not command.startswith("docker"), f"docs/operations.md: a docker command this test cannot replay: {command}"
        return command.replace("/var/lib/m3", str(self.state)).replace("/srv/", f"{self.srv}/").replace(" /srv ", f" {self.srv} ")

    def run(self, commands: list[str]) -> subprocess.CompletedProcess:
        script = "\n".join(self.translate(c) for c in commands)
        return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=120)


def _result_object() -> Dataset:
    """A re-identified object as a send that failed leaves it in the outbox."""
    ds = Dataset()
    ds.preamble = b"\0" * 128
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "DOE^JANE", "PAT-777", "OT"
    return ds


@pytest.fixture
def site(tmp_path) -> Site:
    site = Site(tmp_path)
    audit = AuditLog(site.state / "audit.jsonl", max_bytes=600, keep_files=5)  # small: the copy spans rotated files
    for n in range(6):
        audit.event("login", user=f"user{n}", client="10.0.0.1")
    (site.state / "login-state.json").write_text('{"addresses": {}}\n')
    site.batch = Outbox(site.state / "outbox").add([_result_object()])
    site.audit = audit
    return site


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.name != "audit.jsonl.lock"}


def test_a_backup_taken_while_m3_runs_is_checked_and_restores_the_audit_log_outbox_and_config_into_an_empty_volume(site):
    modes = _modes(site.state)
    commands = _commands(_blocks("### Back up")[0])
    backup = site.run(commands)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    # m3 audit verify on the live log and on the unpacked copy
    assert backup.stdout.count("6 record(s) in 2 file(s), seq 1-6, chain intact") == 2, backup.stdout
    # the copy's check is what shows an edit made to it later
    [copy_check] = [c for c in commands if "--log /srv/backup/check/" in c]
    copied = site.srv / "backup" / "check" / "audit.jsonl"
    copied.write_text(copied.read_text().replace('"user": "user5"', '"user": "someone"'))
    edited = site.run([copy_check])
    assert edited.returncode == 1 and "TAMPERED" in edited.stdout + edited.stderr
    rotated = sorted(p.name for p in site.state.glob("audit.jsonl.*"))
    assert "audit.jsonl.1" in rotated and "audit.jsonl.head" in rotated

    site.audit.event("login", user="after-the-backup", client="10.0.0.1")
    shutil.rmtree(site.state)  # the volume is lost, and the config with it
    shutil.rmtree(site.srv / "m3")
    [restore_block] = _blocks("### Restore")
    for kind in ("state", "config"):  # the copies of today, under the names the restore block gives as its example
        [today] = site.srv.joinpath("backup").glob(f"m3-{kind}-*.tar.gz")
        named = re.search(rf"/srv/backup/(m3-{kind}-[0-9-]+\.tar\.gz)", restore_block)[1]
        shutil.copy(today, site.srv / "backup" / named)
    restore = site.run(_commands(restore_block))
    assert restore.returncode == 0, restore.stdout + restore.stderr

    assert site.config.is_file() and (site.srv / "m3" / "tls" / "hospital-ca.pem").is_file()
    assert not (site.srv / "m3" / "models").exists(), "the config copy leaves the models out"
    users = [r["user"] for r in AuditLog(site.state / "audit.jsonl").read()]
    assert users == [f"user{n}" for n in range(6)], "the restored log is the log as it was copied"
    assert site.batch.name in restore.stdout, restore.stdout  # m3 pacs outbox list shows the waiting batch
    assert _modes(site.state) == modes, "the restore changed a file's mode"
    assert modes[f"outbox/{site.batch.name}/000.dcm"] == 0o600  # the re-identified object: the service user only
    assert (site.state / "login-state.json").read_text() == '{"addresses": {}}\n'


@pytest.fixture
def running(site):
    """m3's health server on the site's config (what `docker exec m3 m3 health` asks)."""
    server = subprocess.Popen([sys.executable, "-m", "app.health", "--serve", "--host", "127.0.0.1"], cwd=site.root,
                              env=site.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        if subprocess.run([sys.executable, "-m", "app.main", "health"], env=site.env, capture_output=True,
                          timeout=30).returncode == 0:
            break
        time.sleep(0.3)
    yield site
    server.terminate()
    server.wait(timeout=10)


def test_upgrade_and_rollback_run_as_written_and_keep_the_records_written_in_between(running):
    site = running
    for heading in ("## 4. Upgrade", "## 5. Rollback"):
        done = site.run(_commands(_blocks(heading)[0]))
        assert done.returncode == 0, f"{heading}\n{done.stdout}\n{done.stderr}"
    export = site.run(_commands(_blocks("## 5. Rollback")[1]))
    assert export.returncode == 0, export.stderr
    kept = (site.srv / "backup" / "audit-during-upgrade.jsonl").read_text().splitlines()
    assert len(kept) == len(site.audit.read()) == 6


def test_the_upgrade_check_stops_on_a_setting_the_release_does_not_know(site):
    [check] = [c for c in _commands(_blocks("## 4. Upgrade")[0]) if c.startswith("docker run")]
    assert site.run([check]).returncode == 0
    site.config.write_text(site.config.read_text().replace("port =", "prot ="))
    refused = site.run([check])
    assert refused.returncode == 1
    assert "unknown setting server.prot (did you mean server.port?)" in refused.stderr


def test_every_make_command_of_the_guide_is_a_target_the_makefile_runs(tmp_path):
    text = DOC.read_text()
    commands = [c for block in re.findall(r"```bash\n(.*?)```", text, re.S) for c in _commands(block)
                if c.startswith("make ")]
    assert {shlex.split(c)[1] for c in commands} >= {"lock", "wheelhouse", "install-offline", "test"}
    for command in commands:
        words = shlex.split(command.split("#")[0])
        dry = subprocess.run([*words[:1], "-n", f"VENV={tmp_path / 'venv'}", *words[1:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert dry.returncode == 0, f"{command}: {dry.stderr}"
