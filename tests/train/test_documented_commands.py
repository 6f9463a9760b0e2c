"""The commands README.md and docs/training.md give a researcher work as written: each parses with the real `m3`
parser, expert-training commands written together never land in a run folder that refuses them, and the training
guide's run-folder commands run, in order, on a micro run."""

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
from pathlib import Path

from app.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "training.md")
# A synopsis, not a command: alternatives (a|b), placeholders (NAME, STUDY, <run>), elisions (...).
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|^<.+>$|\.\.\.|\|")


def documented_commands(path: Path) -> list[list[list[str]]]:
    """The `m3` commands of a Markdown file as a reader meets them together: the lines of one fenced block, or the
    inline `m3 …` spans of one line (a paragraph line, a table row). Each command is its tokens after `m3`;
    synopses and bare command names (`m3 ask`, a heading's `m3 train`) are left out."""
    groups, block = [], None
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            if block is None:
                block = []
            else:
                groups.append(block)
                block = None
            continue
        if block is not None:
            text = line.split(" # ")[0].strip()
            commands = [text] if text.startswith("m3 ") else []
        else:
            commands = [span.strip() for span in re.findall(r"`([^`]+)`", line) if span.strip().startswith("m3 ")]
        tokens = [shlex.split(c)[1:] for c in commands]
        tokens = [t for t in tokens if not any(_PLACEHOLDER.search(w) for w in t) and "--help" not in t and not _only_names(t)]
        if block is not None:
            block.extend(tokens)
        elif tokens:
            groups.append(tokens)
    return [g for g in groups if g]


def _only_names(tokens: list[str]) -> bool:
    """True for `train` or `pacs outbox`: command names and nothing to run."""
    parser = build_parser()
    for word in tokens:
        sub = next((a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if sub is None or word not in sub.choices:
            return False
        parser = sub.choices[word]
    return True


def _parse(tokens: list[str]):
    """The namespace ``m3 TOKENS`` parses to, or the parser's error message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(tokens)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1]


def _same_weights(a: Path, b: Path) -> bool:
    """Every tensor of every safetensors file under model folders ``a`` and ``b`` is equal."""
    import torch
    from safetensors.torch import load_file

    files = sorted(f.relative_to(a) for f in a.rglob("*.safetensors"))
    if not files or files != sorted(f.relative_to(b) for f in b.rglob("*.safetensors")):
        return False
    for f in files:
        x, y = load_file(str(a / f)), load_file(str(b / f))
        if set(x) != set(y) or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def _all_commands() -> list[tuple[Path, list[list[str]]]]:
    return [(doc, group) for doc in DOCS for group in documented_commands(doc)]


def test_every_documented_m3_command_parses_with_the_real_parser():
    found = {" ".join(c) for _, group in _all_commands() for c in group}
    assert {"train all --recipe micro --out runs/micro", "train all --out runs/micro --resume",  # README and guide
            "train all --recipe runs/micro/recipe.json --out runs/again", "train ift --out runs/micro --force --steps 40",
            "experts train cxr_classification", "experts train mri_brain_tumor"} <= found  # the walk finds the blocks
    wrong = []
    for doc, group in _all_commands():
        for command in group:
            parsed = _parse(command)
            if isinstance(parsed, str):
                wrong.append(f"{doc.name}: m3 {shlex.join(command)} → {parsed}")
    assert not wrong, "documented commands that the m3 parser refuses:\n" + "\n".join(wrong)


def test_expert_training_commands_written_together_use_a_run_folder_that_accepts_them_and_weights_that_exist():
    """Typed in order, the second run of an expert in the same --run-dir is refused unless it says --resume or
    --force; --init-from names a folder in the repository or one an earlier command of the group writes."""
    from experts.train import TrainConfig, default_weights_root

    problems, chains = [], 0
    for doc, group in _all_commands():
        runs, written = set(), set()
        trained = [(c, _parse(c)) for c in group if c[:2] == ["experts", "train"]]
        chains += len(trained) > 1
        for command, args in trained:
            where = (args.name, Path(args.run_dir))
            if where in runs and not (args.resume or args.force):
                problems.append(f"{doc.name}: m3 {shlex.join(command)}: {args.run_dir}/{args.name} already holds the run of an earlier "
                                "command (add --force or --resume, or another --run-dir)")
            if args.init_from and Path(args.init_from) not in written and not (ROOT / args.init_from).is_dir():
                problems.append(f"{doc.name}: m3 {shlex.join(command)}: --init-from {args.init_from} is neither in the repository "
                                "nor written by an earlier command")
            runs.add(where)
            written.add(default_weights_root(TrainConfig(name=args.name, run_dir=args.run_dir, weights_root=args.weights_root)) / args.name)
    assert chains >= 1  # the README's continued mri_brain_tumor training is checked, not skipped
    assert not problems, "\n".join(problems)


def test_the_training_guides_run_folder_commands_run_as_written_on_a_micro_run(micro_run, tmp_path):
    """docs/training.md's first block, typed in a folder whose runs/micro is the micro run (its first command): the
    saved recipe trains again to the same weights, --resume on a finished run skips every stage, and a finished
    stage trains again with --force and other steps. Commands of the tiny or base recipe are only parsed above."""
    ref_out, ref_final = micro_run
    [block, *_] = documented_commands(ROOT / "docs" / "training.md")
    assert block[0] == ["train", "all", "--recipe", "micro", "--out", "runs/micro"]  # what micro_run ran
    shutil.copytree(ref_out, tmp_path / "runs" / "micro")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ran = {}
    for command in block[1:]:
        recipe = command[command.index("--recipe") + 1] if "--recipe" in command else None
        if recipe in ("tiny", "base"):
            continue
        res = subprocess.run([sys.executable, "-m", "app.main", *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"m3 {shlex.join(command)}\n{res.stderr[-3000:]}"
        ran[" ".join(command)] = res.stderr
    readme_block = next(g for g in documented_commands(ROOT / "README.md") if block[0] in g)
    readme_train = {" ".join(c) for c in readme_block if c[0] == "train"}
    assert readme_train - {" ".join(block[0])} <= set(ran)  # the README's block is the guide's

    assert _same_weights(tmp_path / "runs" / "again" / "final", ref_final)
    resumed = ran["train all --out runs/micro --resume"]
    assert resumed.count("already finished (skipped)") == 5  # vision + four VLM phases
    card = (tmp_path / "runs" / "micro" / "final" / "model_card.md").read_text()  # written again by the resume's evaluation
    first = re.search(r"\| `m3 train all --recipe micro --out \S+ --experts truth` \| \d+(\.\d+)? \| finished \|", card)
    again = card.find("| `m3 train all --out runs/micro --resume` |")
    assert first and again > first.start()  # every invocation that made it, in order, with its wall time
    forced = ran["train ift --out runs/micro --force --steps 40"]
    assert "--force: discarding" in forced
    assert json.loads((tmp_path / "runs" / "micro" / "ift" / "ift" / "metrics.json").read_text())["steps"] == 40
    assert json.loads((tmp_path / "runs" / "micro" / "recipe.json").read_text())["stages"]["ift"]["steps"] == 40
