"""The shipped accelerate configs: each is parsed by accelerate, turned into the launch environment by
accelerate's own launcher code, and the state / plugin objects are built from that environment on CPU."""

from __future__ import annotations

import pytest
import transformers
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

from vlm.train.launch import CONFIGS, LaunchError, load_cluster_config, main, plan_launch

TRAIN = ["train", "ift", "--data", "/data/ift.json"]


@pytest.fixture
def launched_env(monkeypatch):
    """Apply a plan's environment as the launched process would see it; reset accelerate's singletons."""

    def apply(plan):
        for key, value in plan.env.items():
            monkeypatch.setenv(key, value)
        return plan

    yield apply
    AcceleratorState._reset_state(True)


def test_every_config_parses_with_accelerates_loader():
    expected = {"cpu": DistributedType.NO, "gpu": DistributedType.NO, "fsdp": DistributedType.FSDP,
                "zero3": DistributedType.DEEPSPEED, "multi-node": DistributedType.FSDP}
    assert set(CONFIGS) == set(expected)
    for name, kind in expected.items():
        cluster = load_cluster_config(name)
        assert cluster.distributed_type == kind, name
        assert cluster.mixed_precision == ("no" if name == "cpu" else "bf16"), name


def test_cpu_config_builds_a_cpu_accelerator(launched_env):
    plan = launched_env(plan_launch("cpu", TRAIN))
    assert plan.launcher == "simple" and plan.command[1:] == ["-m", "app.main", *TRAIN]
    accelerator = Accelerator()
    assert accelerator.device.type == "cpu" and accelerator.num_processes == 1
    assert accelerator.distributed_type == DistributedType.NO and accelerator.mixed_precision == "no"


def test_single_gpu_config_pins_one_card_in_bf16(launched_env):
    import torch

    plan = launched_env(plan_launch("gpu", TRAIN))
    assert str(load_cluster_config("gpu").gpu_ids) == "0" and plan.env["ACCELERATE_USE_CPU"] == "False"
    # accelerate writes the card pin where it finds a CUDA backend (newer releases: only there)
    assert plan.env.get("CUDA_VISIBLE_DEVICES", "" if torch.cuda.is_available() else "0") == "0"
    assert Accelerator().mixed_precision == "bf16"  # on this CPU-only host the same state falls back to CPU


def test_fsdp_config_shards_each_decoder_layer(launched_env):
    plan = launched_env(plan_launch("fsdp", TRAIN, num_processes=4))
    assert plan.launcher == "torchrun" and plan.torchrun["nproc_per_node"] == "4"
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT" and plugin.activation_checkpointing
    assert plugin.cpu_ram_efficient_loading  # rank 0 reads the weights, the others get them by broadcast
    tiny = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    plugin.set_auto_wrap_policy(tiny)
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {transformers.models.llama.modeling_llama.LlamaDecoderLayer}


def test_zero3_config_builds_a_stage3_deepspeed_plugin(launched_env):
    plan = launched_env(plan_launch("zero3", TRAIN))
    assert plan.launcher == "deepspeed" and plan.env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    plugin = DeepSpeedPlugin()  # the plugin the launched process builds (deepspeed itself is imported later, on GPUs)
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == 3 and zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_param"]["device"] == "none" and plugin.deepspeed_config["gradient_clipping"] == 1.0
    assert plugin.zero3_init_flag is True


def test_multi_node_config_gives_each_node_its_rank(launched_env):
    with pytest.raises(LaunchError, match="--main-process-ip"):
        plan_launch("multi-node", TRAIN)
    plan = launched_env(plan_launch("multi-node", TRAIN, machine_rank=1, main_process_ip="10.0.0.1"))
    assert plan.torchrun == {"nproc_per_node": "8", "nnodes": "2", "node_rank": 1,
                             "rdzv_endpoint": "10.0.0.1:29500", "rdzv_backend": "static"}
    assert FullyShardedDataParallelPlugin().fsdp_version == 2


def test_dry_run_cli_prints_the_plan(capsys):
    assert main(["fsdp", "--dry-run", "--", *TRAIN]) == 0
    out = capsys.readouterr().out
    assert "launcher torchrun" in out and "FSDP_VERSION=2" in out and "-m app.main train ift" in out
    assert main(["nope", "--dry-run", "--", *TRAIN]) == 2
