"""Adapters that run published models from local folders as m3 experts: MONAI bundles, TorchXRayVision
DenseNet weights, TotalSegmentator. Nothing is downloaded; a missing folder or package gives an
``ExpertError`` naming what is expected where."""

from experts.adapters.monai_bundle import MonaiBundleExpert
from experts.adapters.torchxrayvision import TorchXRayVisionExpert
from experts.adapters.totalsegmentator import TotalSegmentatorExpert

__all__ = ["MonaiBundleExpert", "TorchXRayVisionExpert", "TotalSegmentatorExpert"]
