"""Adapters for published models, each run on a small model this test writes in the real layout:
a MONAI bundle (configs/inference.json + models/model.pt + configs/metadata.json), TorchXRayVision
DenseNet weights (torchvision key layout + op_threshs), and TotalSegmentator's Python API."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from data.phantoms.geometry import axial_affine
from data.study import Volume
from experts.adapters.monai_bundle import MonaiBundleExpert
from experts.adapters.torchxrayvision import TorchXRayVisionExpert, monai_densenet_for, xrv_to_monai_state
from experts.adapters.totalsegmentator import TotalSegmentatorExpert
from experts.base import ExpertError

INFERENCE = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg", "resample": False},
    ]},
}
METADATA = {"version": "0.1.0", "name": "tiny threshold bundle", "description": "bright voxels.",
            "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "bright structure"}}}}}


@pytest.fixture()
def bundle(tmp_path):
    root = tmp_path / "tiny_bundle"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    # channel 1 wins where the scaled intensity exceeds 0.5, i.e. above 0 HU
    state = {"weight": torch.tensor([0.0, 20.0]).reshape(2, 1, 1, 1, 1), "bias": torch.tensor([0.0, -10.0])}
    torch.save(state, root / "models" / "model.pt")
    return root


def test_bundle_runs_its_own_pre_and_postprocessing_and_returns_a_mask_on_the_input_grid(bundle):
    shape = (60, 50, 24)
    affine = axial_affine(shape, (3.0, 3.0, 5.0))  # LPS-stored, not the bundle's 4 mm RAS grid
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[20:40, 10:30, 6:18] = 400.0
    expert = MonaiBundleExpert(bundle, name="tiny")
    res = expert.run(Volume(image, affine, modality="CT"))
    mask = res.label_volume.array
    assert mask.shape == shape and res.label_names == {1: "bright structure"}
    truth = image > 0
    dice = 2 * np.logical_and(mask == 1, truth).sum() / ((mask == 1).sum() + truth.sum())
    assert dice > 0.9
    ml = next(m.value for m in res.measurements if m.structure == "bright structure")
    assert ml == pytest.approx(truth.sum() * 3 * 3 * 5 / 1000, rel=0.15)
    assert not (bundle / "eval").exists()  # SaveImaged was left out: nothing written into the bundle


def test_missing_bundle_parts_name_the_expected_path(bundle, tmp_path):
    with pytest.raises(ExpertError, match=str(tmp_path / "absent")):
        MonaiBundleExpert(tmp_path / "absent")
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ExpertError, match="models/model.pt"):
        MonaiBundleExpert(bundle)


def _xrv_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """MONAI DenseNet keys written back in TorchXRayVision's (torchvision's) layout."""
    out = {}
    for k, v in model.state_dict().items():
        out[k.replace(".layers.", ".").replace("class_layers.out.", "classifier.")] = v
    return out


def test_torchxrayvision_state_dict_loads_into_the_equivalent_monai_densenet(tmp_path):
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    ref = DenseNet(spatial_dims=2, in_channels=1, out_channels=18, init_features=8, growth_rate=4, block_config=(2, 3), bn_size=2).eval()
    state = _xrv_state(ref)
    assert "features.denseblock1.denselayer1.norm1.weight" in state and "classifier.weight" in state  # torchvision names
    state["op_threshs"] = torch.full((18,), 0.3)
    torch.save(state, tmp_path / "xrv-densenet.pt")
    expert = TorchXRayVisionExpert(tmp_path / "xrv-densenet.pt")
    image = np.random.default_rng(0).uniform(0, 4095, (300, 280, 1)).astype(np.float32)
    res = expert.run(Volume(image, np.eye(4), modality="DX"))
    assert [f.label for f in res.findings][:3] == ["Atelectasis", "Consolidation", "Infiltration"]
    # same numbers as the reference network on the same preprocessing, op_norm applied
    rebuilt = monai_densenet_for(state)
    rebuilt.load_state_dict(xrv_to_monai_state(state))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), ref.state_dict().values()))
    for f in res.findings:
        assert 0.0 <= f.probability <= 1.0 and f.present == (f.probability >= 0.5)
    normalised = expert.probabilities(Volume(image, np.eye(4), modality="DX"))
    expert.op_threshs = None
    raw = expert.probabilities(Volume(image, np.eye(4), modality="DX"))
    expected = np.where(raw < 0.3, raw / 0.6, 1 - (1 - raw) / 1.4)  # TorchXRayVision's op_norm at threshold 0.3
    assert np.allclose(normalised, expected, atol=1e-6)


def test_torchxrayvision_pickled_model_without_the_package_and_missing_file_are_clear(tmp_path):
    from monai.networks.nets import DenseNet

    model = DenseNet(spatial_dims=2, in_channels=1, out_channels=3, init_features=8, growth_rate=4, block_config=(2,))
    torch.save(model, tmp_path / "pickled.pt")
    if "torchxrayvision" not in sys.modules:
        with pytest.raises(ExpertError, match="pickled model.*torchxrayvision"):
            TorchXRayVisionExpert(tmp_path / "pickled.pt")
    with pytest.raises(ExpertError, match=str(tmp_path / "none.pt")):
        TorchXRayVisionExpert(tmp_path / "none.pt")


def test_totalsegmentator_absent_is_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    monkeypatch.setitem(sys.modules, "totalsegmentator.config", None)
    with pytest.raises(ExpertError, match="pip install TotalSegmentator.*nnunet/results"):
        TotalSegmentatorExpert()


def test_totalsegmentator_api_is_called_the_documented_way(tmp_path, monkeypatch):
    """A package exposing TotalSegmentator's documented API (python_api.totalsegmentator, map_to_binary.class_map,
    config.get_weights_dir), written here because the real one (nnU-Net) is not installed on this machine."""
    pkg = tmp_path / "site" / "totalsegmentator"
    pkg.mkdir(parents=True)
    weights = tmp_path / "weights" / "Dataset291_TotalSegmentator_part1_organs_1559subj"
    weights.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(f"def get_weights_dir():\n    return {str(weights.parent)!r}\n")
    (pkg / "map_to_binary.py").write_text("class_map = {'total': {1: 'spleen', 2: 'kidney_right'}}\n")
    (pkg / "python_api.py").write_text(textwrap.dedent("""
        import nibabel as nib, numpy as np
        calls = []
        def totalsegmentator(input, output=None, ml=False, task="total", fast=False, device="gpu", quiet=False, roi_subset=None, **kw):
            calls.append(dict(ml=ml, task=task, output=output, device=device))
            data = np.asarray(input.dataobj)
            return nib.Nifti1Image(((data > 0).astype(np.int16) + (data > 500)).astype(np.int16), input.affine)
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m.startswith("totalsegmentator")]:
        monkeypatch.delitem(sys.modules, name)
    expert = TotalSegmentatorExpert()
    image = np.full((20, 20, 10), -100.0, dtype=np.float32)
    image[5:10, 5:10, 2:6] = 100.0
    image[12:15, 12:15, 2:4] = 900.0
    res = expert.run(Volume(image, np.diag([2.0, 2.0, 3.0, 1.0]), modality="CT"))
    api = sys.modules["totalsegmentator.python_api"]
    assert api.calls[-1] == {"ml": True, "task": "total", "output": None, "device": "cpu"}
    vols = {m.structure: m.value for m in res.measurements}
    assert vols == {"spleen": pytest.approx(100 * 0.012), "kidney_right": pytest.approx(18 * 0.012)}
    with pytest.raises(ExpertError, match="unknown structure"):
        expert.run(Volume(image, np.eye(4), modality="CT"), roi_subset=["brain"])
