"""Reproducible builds: requirements.lock (the image, `make install`) and requirements-dev.lock (`make install-dev`,
`make wheelhouse`) pin every dependency of pyproject.toml with hashes, torch as its CPU wheel; the Dockerfile and
the Makefile install from them hash-checked, and `WHEELHOUSE=DIR` asks no package index."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# the SHA-256 of torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl, as the PyTorch CPU wheel index lists it
TORCH_CPU_WHEEL_SHA256 = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"


def _read_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """name → (version, hashes) of a pip-compile lock file (``NAME==VERSION \\`` then ``--hash=sha256:...`` lines)."""
    text = (ROOT / name).read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if head:
            pins[canonicalize_name(head.group(1))] = (head.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def runtime_lock():
    return _read_lock("requirements.lock")


@pytest.fixture(scope="module")
def dev_lock():
    return _read_lock("requirements-dev.lock")


def test_every_dependency_of_pyproject_is_pinned_with_hashes_to_a_version_it_accepts(pyproject, runtime_lock, dev_lock):
    runtime = [Requirement(r) for r in pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]]
    dev = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["dev"]]
    for lock_name, lock, required in (("requirements.lock", runtime_lock, runtime),
                                      ("requirements-dev.lock", dev_lock, runtime + dev)):
        for req in required:
            name = canonicalize_name(req.name)
            assert name in lock, f"{req.name} (pyproject.toml) is missing from {lock_name}: run `make lock`"
            version, hashes = lock[name]
            assert req.specifier.contains(Version(version), prereleases=True), \
                f"{lock_name} pins {req.name}=={version}, outside pyproject.toml's {req}: run `make lock`"
            assert hashes, f"{lock_name}: {req.name} has no --hash"
    for name, (version, hashes) in {**runtime_lock, **dev_lock}.items():
        assert hashes, f"{name}=={version} has no --hash (pip --require-hashes refuses the whole file)"


def test_the_dev_lock_keeps_every_runtime_pin_and_hash(runtime_lock, dev_lock):
    changed = {name: (pin, dev_lock.get(name)) for name, pin in runtime_lock.items() if dev_lock.get(name) != pin}
    assert not changed, f"requirements-dev.lock differs from requirements.lock in {changed}"
    assert len(dev_lock) > len(runtime_lock)


def test_torch_is_locked_to_the_cpu_wheel_of_the_version_in_constraints_cpu(runtime_lock, dev_lock):
    pinned = [ln for ln in (ROOT / "constraints-cpu.txt").read_text().splitlines() if ln.startswith("torch==")]
    assert pinned == ["torch==2.13.0"]
    for lock in (runtime_lock, dev_lock):
        # no local label: a GPU server's CUDA torch of the same version, installed first, satisfies the line
        assert lock["torch"] == ("2.13.0", [TORCH_CPU_WHEEL_SHA256])
        cuda = [name for name in lock if re.match(r"nvidia-(cu|nccl|nvjitlink|nvtx|nvshmem)", name) or name == "triton"]
        assert not cuda, f"the CUDA build's libraries are locked: {cuda}"


def test_the_image_installs_the_lock_hash_checked_and_m3_without_dependencies(dockerfile):
    copied = [w for ins in dockerfile.all("COPY") for w in ins.text.split()]
    assert "requirements.lock" in copied and "constraints-cpu.txt" not in copied
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()
    [install] = [ins.text for ins in dockerfile.all("RUN") if "requirements.lock" in ins.text]
    pips = [shlex.split(cmd) for cmd in re.split(r"&&|;\s*then|;\s*fi", install) if "pip install" in cmd]
    lock_step = next(p for p in pips if "requirements.lock" in p)
    assert {"--require-hashes", "-r"} <= set(lock_step)
    m3_step = next(p for p in pips if p[-1] == ".")
    assert "--no-deps" in m3_step, "m3 itself must not pull dependencies past the lock"
    # the default build takes torch from the lock; a GPU build names the lock's version
    assert dockerfile.args["TORCH_SPEC"] == ""


def _make_dry_run(*args: str, tmp_path: Path) -> list[str]:
    """The commands `make` would run (``-n``) for a venv that does not exist yet, one per line."""
    out = subprocess.run(["make", "-n", "-B", f"VENV={tmp_path / 'venv'}", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def test_make_install_dev_installs_both_locks_hash_checked_and_m3_editable_without_dependencies(tmp_path):
    lines = _make_dry_run("install-dev", tmp_path=tmp_path)
    pips = [shlex.split(ln) for ln in lines if " install " in ln and "/pip" in ln]
    locks = [p[p.index("-r") + 1] for p in pips if "-r" in p]
    assert locks == ["requirements.lock", "requirements-dev.lock"]
    assert all("--require-hashes" in p for p in pips if "-r" in p)
    [m3] = [p for p in pips if "-e" in p]
    assert m3[-2:] == ["-e", "."] and "--no-deps" in m3
    assert any("--upgrade" in p for p in pips), "online installs still bring pip up to date"


def test_make_install_dev_with_a_wheelhouse_asks_no_package_index(tmp_path):
    wheelhouse = tmp_path / "wheels"
    lines = _make_dry_run("install-dev", f"WHEELHOUSE={wheelhouse}", tmp_path=tmp_path)
    pips = [shlex.split(ln) for ln in lines if "/pip" in ln]
    assert len(pips) == 3  # the two locks and m3; no pip upgrade, which would need an index
    for p in pips:
        assert "--no-index" in p and p[p.index("--find-links") + 1] == str(wheelhouse), p


def test_make_wheelhouse_downloads_every_file_of_the_dev_lock_hash_checked(tmp_path):
    wheelhouse = tmp_path / "wheels"
    [download] = [shlex.split(ln) for ln in _make_dry_run("wheelhouse", f"WHEELHOUSE={wheelhouse}", tmp_path=tmp_path)
                  if " download " in ln]
    assert download[download.index("-r") + 1] == "requirements-dev.lock"
    assert {"--require-hashes", "--no-deps"} <= set(download)
    assert download[download.index("-d") + 1] == str(wheelhouse)
    offline = _make_dry_run("install-offline", f"WHEELHOUSE={wheelhouse}", tmp_path=tmp_path)
    assert any(f"install-dev WHEELHOUSE={wheelhouse}" in ln for ln in offline)


def test_make_lock_regenerates_both_lock_files_from_pyproject():
    script = (ROOT / "scripts" / "lock.sh").read_text()
    lines = subprocess.run(["make", "-n", "lock"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert "bash scripts/lock.sh" in lines
    assert "--generate-hashes" in script and "-c constraints-cpu.txt" in script
    assert re.search(r"^compile requirements\.lock$", script, re.M)
    assert re.search(r"^compile requirements-dev\.lock --extra dev -c requirements\.lock$", script, re.M)
    for name in ("requirements.lock", "requirements-dev.lock"):
        assert "#    make lock\n" in (ROOT / name).read_text()[:300], f"{name} does not name its regenerate command"
