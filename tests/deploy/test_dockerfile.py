"""The container recipe: lint, what the image promises (offline, non-root, health check, locked torch),
and its install + start steps executed for real in a fresh virtual environment."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from localhost import free_port


ROOT = Path(__file__).resolve().parents[2]
LOCAL_INDEX = "file:///opt/pypi/simple"  # this machine's wheel index, passed like `--build-arg TORCH_INDEX_URL=...`


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_offline_non_root_and_health_checked(dockerfile):
    env = dockerfile.env
    assert (env["HF_HUB_OFFLINE"], env["TRANSFORMERS_OFFLINE"], env["GRADIO_ANALYTICS_ENABLED"]) == ("1", "1", "False")
    user = dockerfile.all("USER")[-1].text
    uid = user.split(":")[0].replace("${M3_UID}", dockerfile.args["M3_UID"])
    assert uid.isdigit() and int(uid) >= 1000, f"the image must run as an unprivileged numeric user, got USER {user}"
    health = dockerfile.one("HEALTHCHECK").text
    assert json.loads(health.split("CMD", 1)[1]) == ["python", "-m", "app.health"]
    assert json.loads(dockerfile.one("ENTRYPOINT").text) == ["m3"]
    assert json.loads(dockerfile.one("CMD").text) == ["serve", "--host", "0.0.0.0"]
    assert env["M3_CONFIG"] == "/etc/m3/m3.toml"


def test_cpu_default_and_gpu_variant_take_the_locked_torch(dockerfile):
    assert dockerfile.args["BASE_IMAGE"] == "python:3.11-slim"
    lock = (ROOT / "requirements.lock").read_text()
    pinned = [ln.split()[0] for ln in (ROOT / "constraints-cpu.txt").read_text().splitlines() if ln.startswith("torch==")]
    assert pinned and re.search(rf"^{re.escape(pinned[0])} \\$", lock, re.M), f"requirements.lock does not pin {pinned}"
    assert dockerfile.args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    header = (ROOT / "Dockerfile").read_text().split("ARG BASE_IMAGE")[0]
    assert "--build-arg BASE_IMAGE=nvidia/cuda:" in header and "runtime" in header
    assert f"--build-arg TORCH_SPEC={pinned[0]}" in header, "the GPU example must name the locked torch version"


def test_everything_copied_exists_and_is_in_the_build_context(dockerfile):
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]

    def in_context(rel: str) -> bool:  # docker's rule: the last matching pattern wins
        included = True
        for pattern in ignore:
            negate, pat = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/"):
                included = negate
        return included

    for ins in dockerfile.all("COPY"):
        *sources, _ = ins.text.split()
        for source in sources:
            matches = sorted(ROOT.glob(source))
            if source.endswith("*"):
                continue  # optional files (README.md*)
            assert matches, f"COPY {source}: missing from the repository"
            assert in_context(source), f"COPY {source}: excluded by .dockerignore"
    assert not in_context(".venv") and not in_context("tests")


def test_install_and_start_steps_in_a_fresh_venv(dockerfile, image_stand_in, tmp_path):
    """Every RUN after the system step, as written, in a fresh venv; then the health server from the
    installed package and the HEALTHCHECK command against it."""
    stand = image_stand_in(TORCH_INDEX_URL=LOCAL_INDEX)
    ran, skipped = [], []
    for ins in dockerfile.instructions:
        if ins.keyword == "WORKDIR":
            stand.set_workdir(ins)
        elif ins.keyword == "COPY":
            stand.copy(ins)
        elif ins.keyword == "RUN":
            if "useradd" in ins.text:  # apt-get + user creation need root in a Debian image: not here
                skipped.append(ins.text)
                continue
            result = stand.run(ins.text)
            assert result.returncode == 0, f"RUN {ins.text}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            ran.append(ins.text)
            if "-m venv" in ins.text:
                stand.reuse_site_packages()
    assert len(ran) == 2 and len(skipped) == 1

    venv_python = Path(stand.env["VIRTUAL_ENV"]) / "bin" / "python"
    where = stand.run(f"{venv_python} -c 'import app.health, app.pacs; print(app.health.__file__)'")
    assert where.returncode == 0 and where.stdout.strip().startswith(stand.env["VIRTUAL_ENV"]), where.stdout + where.stderr
    _assert_package_data_installed(Path(where.stdout.strip()).parents[1])

    # start: the health server from the installed package, configured as docker run would (-e ...)
    port = free_port()
    stand.env.update(M3_SERVER_PORT=str(port), M3_AUDIT_LOG_PATH=str(tmp_path / "state" / "audit.jsonl"))
    (tmp_path / "state").mkdir()
    stand.set_workdir(dockerfile.all("WORKDIR")[-1])
    server = subprocess.Popen([str(venv_python), "-m", "app.health", "--serve", "--host", "127.0.0.1"],
                              cwd=stand.workdir, env=stand.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        healthcheck = json.loads(dockerfile.one("HEALTHCHECK").text.split("CMD", 1)[1])
        deadline, result = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            result = stand.run(" ".join(healthcheck))
            if result.returncode == 0 or server.poll() is not None:
                break
            time.sleep(0.3)
        assert result is not None and result.returncode == 0, f"{result.stderr}\n{server.stdout.read() if server.poll() is not None else ''}"
        body = json.loads(result.stdout.split("healthy: ", 1)[1])
        assert body["status"] == "ok" and body["version"] == "0.1.0"
        assert body["checks"]["model_dir"]["detail"] == "embedded bundle"
    finally:
        server.terminate()
        server.wait(timeout=10)
    down = stand.run(" ".join(healthcheck))
    assert down.returncode == 1 and "no answer" in down.stderr


def _assert_package_data_installed(site_packages: Path) -> None:
    """The default bundle is package data: every weight / card / config file of the source packages
    is in the installed copy (the image bakes what the wheel carries)."""
    suffixes = (".safetensors", ".json", ".md", ".yaml", ".txt", ".jinja", ".css", ".toml")
    # the files the repository tracks (a local build's node_modules or a cache is not source)
    tracked = subprocess.run(["git", "ls-files", "data", "experts", "vlm", "app"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for rel in (Path(t) for t in tracked):
        if rel.suffix in suffixes and "__pycache__" not in rel.parts:
            assert (site_packages / rel).is_file(), f"{rel} is not in the installed package (package data missing)"

