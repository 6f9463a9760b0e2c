"""The objects everything downstream of ingest works with: ``Study → Series → Volume``.

Array convention (as nibabel and MONAI): a volume's ``array`` is indexed ``[i, j, k]`` — for DICOM,
``i`` = column, ``j`` = row, ``k`` = slice — and ``affine`` maps ``(i, j, k, 1)`` to RAS millimetres.
A 2D image (a radiograph, a PNG) is a volume with ``k`` of size 1. Colour images carry a trailing
channel axis ``(I, J, K, 3)``. Only de-identified identifiers are ever stored here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Volume", "Series", "Study", "SkippedObject"]


@dataclass
class Volume:
    """A voxel grid in physical space.

    array: ``(I, J, K)`` or ``(I, J, K, C)`` intensities (CT in HU once rescaled).
    affine: ``(4, 4)`` voxel index → RAS mm.
    modality: DICOM modality code (``CT``, ``MR``, ``DX``, ``CR``, ``OT`` ...).
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "OT"
    body_part: str = ""
    window: tuple[float, float] | None = None  # default (centre, width) for display
    study_uid: str = ""  # de-identified
    series_uid: str = ""  # de-identified
    description: str = ""  # de-identified series description, e.g. "T1c", "Axial CT 5mm"
    sequence: str = ""  # MR sequence role if known: T1, T1c, T2, FLAIR
    meta: dict[str, Any] = field(default_factory=dict)  # de-identified acquisition facts only

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}.")
        if self.array.ndim == 2:
            self.array = self.array[:, :, None]
        if self.array.ndim not in (3, 4):
            raise ValueError(f"array must be (I, J, K) or (I, J, K, C), got shape {self.array.shape}.")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``i, j, k`` (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(I, J, K)`` (without a colour channel)."""
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def is_2d(self) -> bool:
        return self.shape[2] == 1

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm³)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def like(self, array: np.ndarray, **changes: Any) -> "Volume":
        """A volume on the same grid with another array (a mask, a resampled copy)."""
        fields = dict(
            affine=self.affine.copy(),
            modality=self.modality,
            body_part=self.body_part,
            window=self.window,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            description=self.description,
            sequence=self.sequence,
            meta=dict(self.meta),
        )
        fields.update(changes)
        return Volume(array=array, **fields)


@dataclass
class SkippedObject:
    """A file or DICOM object that was not loaded as an image, with the reason (never PHI)."""

    name: str  # file name relative to the upload, or a de-identified SOP class description
    reason: str


@dataclass
class Series:
    """One image series: its volume plus what ingest noticed about it."""

    uid: str  # de-identified SeriesInstanceUID (or a generated one for NIfTI / images)
    modality: str
    description: str
    volume: Volume
    number: int | None = None
    n_files: int = 1
    warnings: list[str] = field(default_factory=list)
    source_format: str = "dicom"  # dicom | nifti | itk | image

    def summary_row(self) -> dict[str, Any]:
        """One row of the series table shown by ``m3 data info`` and the app."""
        v = self.volume
        return {
            "series": self.uid[-12:],
            "modality": self.modality,
            "description": self.description,
            "shape": "x".join(str(s) for s in v.shape),
            "spacing_mm": "x".join(f"{s:.2f}" for s in v.spacing),
            "files": self.n_files,
            "warnings": len(self.warnings),
        }


@dataclass
class Study:
    """A de-identified study: series, what was skipped, per-file errors, the de-id manifest."""

    uid: str  # de-identified StudyInstanceUID
    series: list[Series] = field(default_factory=list)
    skipped: list[SkippedObject] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)  # IngestError instances, one per bad file
    deid_manifest: dict[str, Any] = field(default_factory=dict)  # what was changed, never values
    description: str = ""

    def __len__(self) -> int:
        return len(self.series)

    def by_modality(self, modality: str) -> list[Series]:
        return [s for s in self.series if s.modality == modality]

    def get(self, uid_or_index: str | int) -> Series:
        """A series by index or by (a suffix of) its de-identified UID."""
        if isinstance(uid_or_index, int):
            return self.series[uid_or_index]
        for s in self.series:
            if s.uid == uid_or_index or s.uid.endswith(uid_or_index):
                return s
        raise KeyError(f"no series {uid_or_index!r} in this study; have {[s.uid[-12:] for s in self.series]}.")
