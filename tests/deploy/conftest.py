"""The Dockerfile as data: instructions, build-argument defaults, environment, and a way to run its
RUN steps in a fresh virtual environment standing in for the image's file system."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# Folders the image creates; in the stand-in they live under a temporary "rootfs".
IMAGE_DIRS = ("/opt/m3", "/etc/m3", "/var/lib/m3", "/models", "/home/m3")


@dataclass
class Instruction:
    keyword: str  # FROM, RUN, ENV, ...
    text: str  # the arguments, continuation lines joined


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults (all stages)
    env: dict[str, str] = field(default_factory=dict)  # ENV as written (unexpanded)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [found] = self.all(keyword)
        return found


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Hand-written minimal parser (no maintained Python Dockerfile parser is installed here): comments,
    ``\\`` continuations, ``ARG k=v`` and ``ENV k=v ...`` pairs."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip()))
    df = Dockerfile(instructions)
    for ins in df.all("ARG"):
        name, _, default = ins.text.partition("=")
        df.args[name] = default.strip('"')
    for ins in df.all("ENV"):
        for pair in shlex.split(ins.text):
            key, _, value = pair.partition("=")
            df.env[key] = value
    return df


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


class ImageStandIn:
    """A temporary folder playing the image's file system, with the Dockerfile's environment.

    Paths under ``IMAGE_DIRS`` map to ``rootfs/...``; ``${VAR}`` in ENV values expand as docker does.
    """

    def __init__(self, df: Dockerfile, rootfs: Path, build_args: dict[str, str]) -> None:
        self.df, self.rootfs = df, rootfs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("M3_", "VIRTUAL_ENV", "PYTHONPATH"))}
        self.env.update({k: build_args.get(k, v) for k, v in df.args.items() if k not in ("BASE_IMAGE",)})
        for key, value in df.env.items():
            self.env[key] = self.map_path(_expand(value, self.env))
        self.workdir = rootfs

    def map_path(self, value: str) -> str:
        parts = []
        for part in value.split(":"):
            if any(part == d or part.startswith(d + "/") for d in IMAGE_DIRS):
                part = str(self.rootfs) + part
            parts.append(part)
        return ":".join(parts)

    def copy(self, ins: Instruction) -> None:
        """COPY SRC... DEST (globs, folders), relative DEST against WORKDIR; __pycache__ left out."""
        words = [w for w in shlex.split(ins.text) if not w.startswith("--")]
        *sources, dest = words
        target = Path(self.map_path(dest)) if dest.startswith("/") else self.workdir / dest
        matched = [p for s in sources for p in sorted(ROOT.glob(s))]
        assert matched, f"COPY {ins.text}: nothing matches in the repository"
        for src in matched:
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
            else:
                out = target / src.name if dest.endswith("/") or target.is_dir() else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def reuse_site_packages(self) -> None:
        """Let the fresh venv see this checkout's installed dependencies (a ``.pth`` line), so its pip
        finds them already satisfied instead of downloading gigabytes; m3 itself still goes into it."""
        venv = self.env["VIRTUAL_ENV"]
        site = Path(sysconfig.get_paths(vars={"base": venv, "platbase": venv})["purelib"])
        site.mkdir(parents=True, exist_ok=True)
        (site / "_reuse_checkout_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    def set_workdir(self, ins: Instruction) -> None:
        self.workdir = Path(self.map_path(ins.text.strip()))
        self.workdir.mkdir(parents=True, exist_ok=True)


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


@pytest.fixture
def image_stand_in(dockerfile, tmp_path):
    def make(**build_args: str) -> ImageStandIn:
        return ImageStandIn(dockerfile, tmp_path / "rootfs", build_args)

    return make

