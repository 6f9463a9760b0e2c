"""Recipe settings from `m3 experts train --set KEY=VALUE`."""

from __future__ import annotations

import numpy as np
import pytest

from experts.base import ExpertError
from experts.cli import _key_values
from experts.train import TrainConfig
from experts.train import make_task
from experts.train_tasks import apply_override


def test_overrides_set_typed_recipe_fields_and_crop_ratios():
    task = make_task("ct_segmentation", TrainConfig(name="ct_segmentation", overrides={
        "lesion_weight": "2.5", "lesion_rate": "0.7", "crop_ratios.liver tumor": "8", "n_train": "5"}))
    r = task.recipe
    assert (r.lesion_weight, r.lesion_rate, r.n_train) == (2.5, 0.7, 5)
    assert isinstance(r.n_train, int) and r.crop_ratios == {"liver tumor": 8.0}


def test_unknown_setting_and_bad_value_are_named():
    task = make_task("ct_segmentation", TrainConfig(name="ct_segmentation"))
    with pytest.raises(ExpertError, match="unknown recipe setting 'lesion_wieght'.*lesion_weight"):
        apply_override(task.recipe, "lesion_wieght", "2")
    with pytest.raises(ExpertError, match="needs a int"):
        apply_override(task.recipe, "steps", "many")


def test_crop_ratio_for_an_unknown_structure_is_refused_before_sampling():
    task = make_task("ct_segmentation", TrainConfig(name="ct_segmentation", overrides={"crop_ratios.pancreas": "3"}))
    with pytest.raises(ExpertError, match="unknown structure 'pancreas'"):
        task.batch(np.random.default_rng(0))


def test_cli_key_values():
    assert _key_values(["a=1", " crop_ratios.liver tumor = 8 "]) == {"a": "1", "crop_ratios.liver tumor": "8"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _key_values(["lesion_weight"])


@pytest.mark.parametrize("flag, expected", [([], None), (["--bf16", "on"], True), (["--bf16", "off"], False)])
def test_bf16_flag_defaults_to_what_the_cpu_does_natively(monkeypatch, flag, expected):
    import experts.train
    from app.main import main

    seen = {}

    def record(cfg):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(experts.train, "train_expert", record)
    assert main(["experts", "train", "cxr_classification", *flag]) == 0
    assert seen["cfg"].bf16 is expected


def test_native_bf16_is_a_plain_answer_about_this_cpu():
    import torch

    from experts.train import native_bf16

    assert native_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _seeds_only(task):
    task._case = lambda seed, **options: {"seed": seed}  # the slot bookkeeping, without drawing phantoms
    return task


def test_refresh_replaces_the_oldest_training_phantom_with_a_new_seed():
    from experts.train_tasks import TEST_SEED, TRAIN_SEED, VAL_SEED, fresh_seed

    task = _seeds_only(make_task("ct_segmentation", TrainConfig(name="ct_segmentation", n_train=3, n_val=1, overrides={"refresh_every": "2"})))
    task.prepare_data()
    assert [c["seed"] for c in task.train_cases] == [TRAIN_SEED, TRAIN_SEED + 1, TRAIN_SEED + 2]
    for step in range(1, 9):
        task.refresh(step)
    # steps 2, 4, 6, 8 drew fresh phantoms 1..4 into slots 0, 1, 2, 0
    assert [c["seed"] for c in task.train_cases] == [fresh_seed(0, 4), fresh_seed(0, 2), fresh_seed(0, 3)]
    fresh = {fresh_seed(s, k) for s in range(10) for k in (1, 99_999)}
    assert not fresh & (set(range(VAL_SEED, VAL_SEED + 1000)) | set(range(TEST_SEED, TEST_SEED + 1000)))
    with pytest.raises(ValueError):
        fresh_seed(0, 0)


def test_a_resumed_run_sees_the_training_set_it_had_at_that_step():
    def cases_at(step: int, resumed: bool) -> list[int]:
        task = _seeds_only(make_task("ct_segmentation", TrainConfig(name="ct_segmentation", n_train=3, n_val=1, overrides={"refresh_every": "2"})))
        if resumed:
            task.prepare_data(start_step=step)
        else:
            task.prepare_data()
            for s in range(step):
                task.refresh(s)
        task.refresh(step)  # the loop's call before the batch of ``step``
        return [c["seed"] for c in task.train_cases]

    for step in (1, 2, 7, 8, 13):
        assert cases_at(step, resumed=True) == cases_at(step, resumed=False), step


def test_without_refresh_the_training_set_stays_fixed():
    task = _seeds_only(make_task("ct_segmentation", TrainConfig(name="ct_segmentation", n_train=2, n_val=1)))
    task.prepare_data(start_step=50)
    before = [c["seed"] for c in task.train_cases]
    for step in range(1, 20):
        task.refresh(step)
    assert [c["seed"] for c in task.train_cases] == before


@pytest.mark.parametrize("name", ["mri_brain_tumor", "cxr_classification"])
def test_refresh_is_refused_where_the_training_set_is_fixed(name):
    with pytest.raises(ExpertError, match=f"refresh_every is not available for {name}"):
        make_task(name, TrainConfig(name=name, overrides={"refresh_every": "4"}))
    assert make_task(name, TrainConfig(name=name, overrides={"refresh_every": "0"})).recipe.refresh_every == 0
