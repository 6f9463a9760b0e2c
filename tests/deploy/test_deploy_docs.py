"""docs/deploy.md and docs/operations.md as an administrator reads them: every `m3` command they give parses with the
real parser, the `docker run` lines mount what the image and the config use, the minimal config example loads once its
files are there, the health and manifest commands behave as described, and the hardware tiers' counts are what their
code prints."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from localhost import free_port

from app.config import ConfigError, env_variable_names, load_config
from app.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY, OPERATIONS = ROOT / "docs" / "deploy.md", ROOT / "docs" / "operations.md"
# sample values for the placeholders of a synopsis (`m3 experts train NAME`, `m3 pacs outbox drop BATCH ...`)
SAMPLES = {"NAME": "ct_segmentation", "BATCH": "20250101T080000-1a2b3c4d", "DAYS": "30", "FOLDER": "/models/experts",
           "STUDY": "study.zip"}


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def _m3_commands(path: Path) -> list[str]:
    """Every `m3 ...` command of a guide: inline spans, and lines of its bash blocks (`docker exec m3 m3 ...` and a
    `docker run ... m3:TAG ARGS`, whose entrypoint is m3, as what runs in the container)."""
    text = path.read_text()
    found = [s for s in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)) if s.startswith("m3 ")]
    for block in _blocks(path, "bash"):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = line.split(" # ")[0].strip()
            line = line.removeprefix("docker exec m3 ")
            run = re.match(r"docker run .*? m3:\S+ (.+)$", line)
            if run and "--entrypoint" not in line:
                line = "m3 " + run[1]
            if line.startswith("m3 "):
                found.append(line)
    return found


def _variants(command: str) -> list[list[str]]:
    """The token lists a synopsis stands for: `a|b` gives one per alternative, `[X ...]` and `X ...` one X,
    placeholders their sample value, shell redirections cut off."""
    words = shlex.split(re.split(r" [>|<] ", command)[0])[1:]
    words = [w.strip("[]") for w in words if w.strip("[]") not in ("", "...")]
    variants: list[list[str]] = [[]]
    for word in words:
        options = word.split("|") if "|" in word and not word.startswith("-") else [word]
        variants = [v + [SAMPLES.get(o, o)] for v in variants for o in options]
    return variants


def _subparser(tokens: list[str]):
    """The parser of the deepest sub-command named in ``tokens`` and the tokens left after its name."""
    parser, rest = build_parser(), list(tokens)
    while rest:
        sub = next((a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if sub is None or rest[0] not in sub.choices:
            break
        parser, rest = sub.choices[rest[0]], rest[1:]
    return parser, rest


def test_every_m3_command_the_guides_give_parses_with_the_real_parser():
    checked, failures = 0, []
    for path in (DEPLOY, OPERATIONS):
        for command in _m3_commands(path):
            for tokens in _variants(command):
                parser, rest = _subparser(tokens)
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err):
                        build_parser().parse_args(tokens)
                except SystemExit as exit_:
                    named_only = not rest and parser.prog != "m3"  # `m3 ask`, `m3 pacs outbox`: a command's name
                    # `m3 serve --device`: a mention of an option, which must exist on that command
                    option_mention = rest and rest[-1].startswith("--") and rest[-1] in parser._option_string_actions
                    if exit_.code != 0 and not named_only and not option_mention:
                        failures.append(f"{path.name}: `{command}` -> m3 {' '.join(tokens)}: {err.getvalue().strip()[-200:]}")
                checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 40


@pytest.fixture(scope="module")
def run_lines() -> list[list[str]]:
    """The `docker run` lines of deploy.md's section 3 (CPU and GPU server), as tokens."""
    section = DEPLOY.read_text().split("## 3. Run", 1)[1].split("\n## 4.", 1)[0]
    lines = [shlex.split(re.sub(r"\\\n\s*", "", b)) for b in re.findall(r"```bash\n(docker run .*?)```", section, re.S)]
    assert len(lines) == 2
    return lines


def _options(tokens: list[str], name: str) -> list[str]:
    return [tokens[i + 1] for i, t in enumerate(tokens) if t == name]


def test_the_run_lines_mount_the_config_users_models_and_state_where_the_image_and_config_read_them(dockerfile, run_lines):
    image_config = tomllib.loads((ROOT / "docs" / "m3.toml").read_text())
    example = tomllib.loads(_blocks(DEPLOY, "toml")[0])  # "With /srv/m3/m3.toml holding at least"
    [volume] = json.loads(dockerfile.one("VOLUME").text)
    built = set(re.findall(r"docker build -t (m3:\w+)", DEPLOY.read_text()))
    for tokens in run_lines:
        assert tokens[-1] in built, f"{tokens[-1]} is not an image section 1 builds"
        mounts = {m.split(":")[1]: m.split(":")[0] for m in _options(tokens, "-v")}
        read_only = {m.split(":")[1] for m in _options(tokens, "-v") if m.endswith(":ro")}
        assert mounts["/etc/m3/m3.toml"] == "/srv/m3/m3.toml" and dockerfile.env["M3_CONFIG"] == "/etc/m3/m3.toml"
        assert mounts["/etc/m3/users.toml"] == "/srv/m3/users.toml" and example["auth"]["users_file"] == "/etc/m3/users.toml"
        assert all(Path(example["models"][k]).parent == Path("/models") for k in ("model_dir", "experts_dir")) and "/models" in mounts
        # the state volume is the one writable mount, and it is where the audit log and the outbox are
        assert set(mounts) - read_only == {volume} == {"/var/lib/m3"}
        assert Path(image_config["audit"]["log_path"]).parent == Path(volume)
        assert Path(image_config["pacs"]["outbox_dir"]).parent == Path(volume)
        [port] = _options(tokens, "-p")
        assert port.split(":")[1] == dockerfile.one("EXPOSE").text == str(image_config["server"]["port"])
        # --read-only: everything the image writes is under the tmpfs or the volume
        assert "--read-only" in tokens and _options(tokens, "--tmpfs")[0].split(":")[0] == "/tmp"
        for key in ("HF_HOME", "MPLCONFIGDIR", "GRADIO_TEMP_DIR"):
            assert dockerfile.env[key].startswith("/tmp/"), key
        settings = set(env_variable_names().values())
        for pair in _options(tokens, "-e"):
            name, value = pair.split("=", 1)
            assert name in settings, f"-e {name} is no m3 setting"
            section_key = {v: k for k, v in env_variable_names().items()}[name].split(".")
            assert example[section_key[0]][section_key[1]] == value, f"-e {pair} differs from the example config"
    assert {"--gpus", "--shm-size"} <= set(run_lines[1]) and "--gpus" not in run_lines[0]


def test_the_minimal_config_example_loads_once_its_files_are_mounted_and_the_password_is_in_the_environment(tmp_path):
    import certifi

    example = _blocks(DEPLOY, "toml")[0]
    models = tmp_path / "models"  # the -v /srv/m3/models:/models:ro mount
    (models / "vlm").mkdir(parents=True)
    (models / "experts").mkdir()
    mounted = example.replace('"/models/', f'"{models}/')
    path = tmp_path / "m3.toml"
    path.write_text(mounted)
    with pytest.raises(ConfigError, match=r"pacs\.ca_bundle must be a readable PEM file, got /etc/m3/hospital-ca\.pem"):
        load_config(path, env={"M3_PACS_PASSWORD": "secret"})  # "mount it read-only too"
    mounted = mounted.replace("/etc/m3/hospital-ca.pem", certifi.where())
    path.write_text(mounted)
    with pytest.raises(ConfigError, match=r"M3_PACS_PASSWORD"):
        load_config(path, env={})  # a user name without its password (secrets.env) refuses the start
    path.write_text(mounted.replace(f'"{models}/vlm"', '"/models/vlm"'))
    with pytest.raises(ConfigError, match=r"models\.model_dir must be an existing folder, got /models/vlm"):
        load_config(path, env={"M3_PACS_PASSWORD": "secret"})  # the site models are mounted too
    path.write_text(mounted)
    config = load_config(path, env={"M3_PACS_PASSWORD": "secret"})
    assert (config.server.host, str(config.auth.users_file), config.models.model_dir, config.models.experts_dir) == (
        "0.0.0.0", "/etc/m3/users.toml", models / "vlm", models / "experts")
    assert (config.pacs.url, config.pacs.writeback_enabled, config.pacs.username, config.pacs.password) == (
        "https://pacs.example.org/dicom-web", True, "m3", "secret")


def test_the_health_commands_print_the_checks_and_exit_0_while_the_server_answers_and_1_when_it_is_down(tmp_path):
    [block] = [b for b in _blocks(DEPLOY, "bash") if "app.health" in b]
    commands = [ln.split(" # ")[0].strip().removeprefix("docker exec m3 ") for ln in block.splitlines()
                if ln.startswith("docker exec m3 ")]
    assert commands == ["python -m app.health", "python -m app.health --probe ready"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3_")}
    env.update(M3_SERVER_PORT=str(port), M3_AUDIT_LOG_PATH=str(tmp_path / "audit.jsonl"))
    server = subprocess.Popen([sys.executable, "-m", "app.health", "--serve", "--host", "127.0.0.1"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        results = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            results = [subprocess.run(shlex.split(c.replace("python", sys.executable, 1)), env=env, capture_output=True,
                                      text=True, timeout=30) for c in commands]
            if all(r.returncode == 0 for r in results):
                break
            time.sleep(0.3)
        assert results and all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
        checks = json.loads(results[0].stdout.split("healthy: ", 1)[1])["checks"]
        assert {"model_dir", "audit_log"} <= set(checks), checks  # "prints the checks"
    finally:
        server.terminate()
        server.wait(timeout=10)
    down = subprocess.run(shlex.split(commands[1].replace("python", sys.executable, 1)), env=env, capture_output=True, timeout=30)
    assert down.returncode == 1


def test_the_manifest_check_of_a_copied_build_names_the_file_that_differs(tmp_path):
    [snippet] = re.findall(r"`(python -c '[^`]*verify_manifest[^`]*)`", DEPLOY.read_text())
    build = tmp_path / "vlm"
    shutil.copytree(ROOT / "vlm" / "weights" / "default", build)
    command = shlex.split(snippet.replace("/srv/m3/models/vlm", str(build)).replace("python", sys.executable, 1))
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    changed = next(p for p in sorted(build.rglob("*.safetensors")))
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "ManifestError" in refused.stderr
    assert str(changed.relative_to(build)) in refused.stderr


def test_the_hardware_tiers_code_prints_the_parameter_counts_the_table_gives():
    [code] = [b for b in _blocks(DEPLOY, "python") if "LlamaForCausalLM" in b]
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout.split()
    comment = re.search(r"# (\d+) (\d+)\n", code).groups()
    assert printed == list(comment)
    lm, tower = map(int, printed)
    hidden = 4096  # the 8B model's LM width: the projector formula of the code's last comment
    projector = 4 * 1152 * 2 + 4 * 1152 * hidden + hidden + hidden * hidden + hidden
    row = f"| VILA-M3 8B | {lm:,} + {tower:,} + {projector:,} = {(lm + tower + projector) / 1e9:.2f} B |"
    assert row in DEPLOY.read_text(), row


def _table_value(text: str):
    """A value as the settings table writes it (`7860`, `false`, `["a", "b"]`, `var/outbox`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _plain(value):
    """A config default as TOML would write it: paths as text, tuples as lists."""
    return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value


def test_the_settings_table_gives_each_settings_default_and_the_images_value():
    from app.config import AppConfig

    defaults, image = AppConfig(), tomllib.loads((ROOT / "docs" / "m3.toml").read_text())
    rows = re.findall(r"^\| `(\w+)\.(\w+)` \| `M3_\w+`[^|]*\| (.*?) \|$", DEPLOY.read_text(), re.M)
    assert len(rows) == len(env_variable_names())
    wrong = []
    for section, key, cell in rows:
        default = _plain(getattr(getattr(defaults, section), key))
        if cell.startswith("—"):
            ok = default in (None, "", [])
        else:
            ok = _table_value(re.match(r"`([^`]*)`", cell)[1]) == default
        in_image = re.search(r"\((?:image|the image's file): `([^`]*)`\)", cell)
        if in_image:
            ok = ok and image[section][key] == _table_value(in_image[1])
        if not ok:
            wrong.append(f"{section}.{key}: the table says {cell!r}, the default is {default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_build_commands_are_the_dockerfiles_own_and_use_only_its_build_arguments(dockerfile):
    [block] = [b for b in _blocks(DEPLOY, "bash") if "docker build" in b]
    header = (ROOT / "Dockerfile").read_text().split("ARG BASE_IMAGE")[0]
    header_commands = [ln.lstrip("# ").rstrip(" \\") for ln in header.splitlines() if re.match(r"#\s+(docker build|--build-arg)", ln)]
    doc_commands = [ln.strip().rstrip(" \\") for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert doc_commands == header_commands
    for arg in re.findall(r"--build-arg (\w+)=", block):
        assert arg in dockerfile.args, f"--build-arg {arg} is no ARG of the Dockerfile"
    named = set(re.findall(r"`(\w+)`", DEPLOY.read_text().split("Build arguments:", 1)[1].split("\n\n", 1)[0]))
    assert set(dockerfile.args) <= named, f"deploy.md does not explain {set(dockerfile.args) - named}"
