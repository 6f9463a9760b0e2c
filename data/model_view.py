"""What the vision-language model sees of a study: one function for training data, chat, ``m3 ask``, ``m3 eval``
and the app.

The model is shown axial slice ``k`` of the study's volume as stored (``array[:, :, k]`` transposed to
``(rows, cols)``), windowed with the series' own window (1st–99th percentile when it has none): a CT its one
series, a brain MRI its four sequences (T1, T1c, T2, FLAIR, in that order) at the same slice, a radiograph its
image. The viewer's own window, zoom, overlay or plane never reach the model, so a picture depends only on the
study and the slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from data.display import percentile_window, window
from data.study import Volume

__all__ = ["MR_SEQUENCE_ORDER", "ModelPictures", "model_pictures", "model_picture", "picture_volumes"]

# the MR sequence roles ``data.dicom_series.mr_sequence`` gives, in the order the model is shown them
MR_SEQUENCE_ORDER = ("T1", "T1c", "T2", "FLAIR")


@dataclass(frozen=True)
class ModelPictures:
    """The pictures of one study at one slice: ``images`` name → ``(rows, cols)`` (or ``(rows, cols, 3)``)
    uint8 in the order the model is shown them; ``slice_index`` the axial index ``k`` on the volumes' own
    third axis (None for a 2D image)."""

    images: dict[str, np.ndarray]
    slice_index: int | None

    @property
    def as_list(self) -> list[np.ndarray]:
        return list(self.images.values())


def model_pictures(volumes: Mapping[str, Volume], slice_index: int | None = None, primary: str | None = None) -> ModelPictures:
    """The picture(s) the model sees of a study's ``volumes`` (name → ``Volume``) at axial slice ``slice_index``
    (default: the middle slice of the shown volume; clipped to the volume).

    primary: the name of the series on screen (default the first); an MR series brings every sequence of the
    study on the same grid, in ``MR_SEQUENCE_ORDER``. Raises ``ValueError`` for an empty ``volumes``.
    """
    chosen = picture_volumes(volumes, primary)
    first = next(iter(chosen.values()))
    if first.is_2d:
        return ModelPictures({name: model_picture(v, 0) for name, v in chosen.items()}, None)
    k = first.shape[2] // 2 if slice_index is None else int(np.clip(int(slice_index), 0, first.shape[2] - 1))
    return ModelPictures({name: model_picture(v, k) for name, v in chosen.items()}, k)


def picture_volumes(volumes: Mapping[str, Volume], primary: str | None = None) -> dict[str, Volume]:
    """The volumes whose slices make the model's picture(s): the series on screen, or for an MR series every
    sequence of the study on its grid, in ``MR_SEQUENCE_ORDER`` (other MR series follow in study order)."""
    if not volumes:
        raise ValueError("a study must hold at least one volume to be shown to the model; got none.")
    name = primary if primary in volumes else next(iter(volumes))
    shown = volumes[name]
    if shown.modality != "MR" or shown.is_2d:
        return {name: shown}
    same_grid = {n: v for n, v in volumes.items() if v.modality == "MR" and v.shape == shown.shape}
    by_role = {(v.sequence or n): n for n, v in same_grid.items() if (v.sequence or n) in MR_SEQUENCE_ORDER}
    if len(by_role) < 2:  # not a multi-sequence study: the series on screen alone
        return {name: shown}
    ordered = [by_role[role] for role in MR_SEQUENCE_ORDER if role in by_role]
    return {n: same_grid[n] for n in ordered}


def model_picture(volume: Volume, k: int) -> np.ndarray:
    """Axial slice ``k`` of ``volume`` as the model sees it: ``(rows, cols)`` uint8 with the volume's window
    (1st–99th percentile of the slice when it has none); colour images as stored, ``(rows, cols, 3)``."""
    plane = volume.array[:, :, k]
    if plane.ndim == 3:  # colour (I, J, 3) → (rows, cols, 3)
        return np.ascontiguousarray(np.transpose(plane, (1, 0, 2)).astype(np.uint8))
    plane = plane.T.astype(np.float32)  # the array is [column, row]
    centre, width = volume.window if volume.window is not None else percentile_window(plane)
    return window(plane, centre, max(float(width), 1e-6))
