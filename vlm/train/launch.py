"""Launch an ``m3 train`` stage with one of the shipped ``accelerate`` configs (vlm/train/accelerate/).

    python -m vlm.train.launch cpu -- train ift --data ...                 # one CPU process
    python -m vlm.train.launch gpu -- train ift ...                        # one GPU, bf16
    python -m vlm.train.launch fsdp --num-processes 4 -- train ift ...     # one node, FSDP2
    python -m vlm.train.launch zero3 -- train medical-ift ...              # one node, DeepSpeed ZeRO-3
    python -m vlm.train.launch multi-node --machine-rank 1 --main-process-ip 10.0.0.1 -- train ift ...
    python -m vlm.train.launch fsdp --dry-run -- train ift                 # print what each process gets

It is ``accelerate launch --config_file CONFIG -m app.main ARGS``: the same parser, validation and
launchers (simple, torchrun, deepspeed) as the ``accelerate`` CLI; this module only names the configs,
applies per-node overrides and can show the resulting plan without starting anything.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.errors import M3Error

__all__ = ["CONFIGS", "CONFIG_DIR", "LaunchError", "LaunchPlan", "config_path", "load_cluster_config", "plan_launch", "launch", "main"]

CONFIG_DIR = Path(__file__).resolve().parent / "accelerate"
CONFIGS = {
    "cpu": "cpu.yaml",
    "gpu": "single_gpu.yaml",
    "fsdp": "multi_gpu_fsdp.yaml",
    "zero3": "deepspeed_zero3.yaml",
    "multi-node": "multi_node_fsdp.yaml",
}
TRAIN_MODULE = "app.main"  # each process runs `python -m app.main train STAGE ...`


class LaunchError(M3Error):
    """A launch that cannot work as asked (unknown config, missing rank-0 address)."""


@dataclass
class LaunchPlan:
    """What ``accelerate launch`` would do with a config: the launcher, its command and environment.

    launcher: ``simple`` (one process), ``torchrun`` (multi-GPU / FSDP) or ``deepspeed``;
    env: the variables accelerate sets for the training processes (``ACCELERATE_*``, ``FSDP_*`` ...);
    torchrun: the per-node torchrun settings (nproc_per_node, nnodes, node_rank, rendezvous).
    """

    config: Path
    accelerate_args: list[str]
    launcher: str
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    torchrun: dict[str, Any] = field(default_factory=dict)


def config_path(name: str | Path) -> Path:
    """A shipped config by name (``cpu``, ``gpu``, ``fsdp``, ``zero3``, ``multi-node``) or a YAML path."""
    if str(name) in CONFIGS:
        return CONFIG_DIR / CONFIGS[str(name)]
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    raise LaunchError(f"unknown accelerate config {str(name)!r}: use one of {sorted(CONFIGS)} or a path to a YAML file.")


def load_cluster_config(name: str | Path) -> Any:
    """The config parsed by accelerate's own loader (an ``accelerate`` ``ClusterConfig``)."""
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(config_path(name)))


def plan_launch(
    config: str | Path,
    script_args: list[str],
    *,
    num_processes: int | None = None,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> LaunchPlan:
    """Validate the config with accelerate and compute the launch without starting a process."""
    from accelerate.commands.launch import _validate_launch_command
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    path = config_path(config)
    cluster = load_cluster_config(path)
    if cluster.num_machines > 1 and not (main_process_ip or cluster.main_process_ip):
        raise LaunchError(
            f"{path.name} spans {cluster.num_machines} machines: pass --main-process-ip (the rank-0 node's address) "
            "and --machine-rank on every node."
        )
    args = _accelerate_args(path, script_args, num_processes, machine_rank, main_process_ip, main_process_port)
    parsed, defaults, mp_from_config = _validate_launch_command(_parser().parse_args(args))
    before = dict(os.environ)
    if parsed.use_deepspeed and not parsed.cpu:
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
        parsed.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command does
        command, env = prepare_deepspeed_cmd_env(parsed)
        launcher = "deepspeed"
    elif (parsed.use_fsdp or parsed.multi_gpu) and not parsed.cpu:
        command, env = None, prepare_multi_gpu_env(parsed)
        launcher = "torchrun"
    else:
        command, env = prepare_simple_launcher_cmd_env(parsed)
        launcher = "simple"
    torchrun = {k: getattr(parsed, k) for k in ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint", "rdzv_backend") if getattr(parsed, k, None) is not None}
    changed = {k: v for k, v in env.items() if before.get(k) != v}
    return LaunchPlan(config=path, accelerate_args=args, launcher=launcher, env=changed, command=list(command or []), torchrun=torchrun)


def launch(config: str | Path, script_args: list[str], **overrides: Any) -> None:
    """Start training: accelerate's own ``launch_command`` with the planned arguments."""
    from accelerate.commands.launch import launch_command

    plan = plan_launch(config, script_args, **overrides)
    launch_command(_parser().parse_args(plan.accelerate_args))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m vlm.train.launch", description="Launch `m3 train` with a shipped accelerate config.")
    p.add_argument("config", help=f"one of {sorted(CONFIGS)} or a YAML path")
    p.add_argument("--num-processes", type=int, help="total processes (all nodes), default from the config")
    p.add_argument("--machine-rank", type=int, help="this node's rank (multi-node)")
    p.add_argument("--main-process-ip", help="rank-0 node address (multi-node)")
    p.add_argument("--main-process-port", type=int, help="rendezvous port")
    p.add_argument("--dry-run", action="store_true", help="print the plan (launcher, command, environment) and exit")
    a = p.parse_args(own)
    if not script_args:
        p.error("give the m3 command after `--`, e.g. `-- train ift --data DIR`")
    overrides = dict(num_processes=a.num_processes, machine_rank=a.machine_rank, main_process_ip=a.main_process_ip,
                     main_process_port=a.main_process_port)
    try:
        if a.dry_run:
            plan = plan_launch(a.config, script_args, **overrides)
            print(f"config   {plan.config}\nlauncher {plan.launcher}\naccelerate launch {' '.join(plan.accelerate_args)}")
            for key, value in sorted({**plan.torchrun, **plan.env}.items()):
                print(f"  {key}={value}")
            return 0
        launch(a.config, script_args, **overrides)
    except LaunchError as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    from accelerate.commands.launch import launch_command_parser

    return launch_command_parser()


def _accelerate_args(path, script_args, num_processes, machine_rank, main_process_ip, main_process_port) -> list[str]:
    args = ["--config_file", str(path)]
    for flag, value in (("--num_processes", num_processes), ("--machine_rank", machine_rank),
                        ("--main_process_ip", main_process_ip), ("--main_process_port", main_process_port)):
        if value is not None:
            args += [flag, str(value)]
    return args + ["-m", TRAIN_MODULE, *script_args]


if __name__ == "__main__":
    sys.exit(main())
