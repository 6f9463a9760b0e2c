"""PNG / JPEG images → a 2D :class:`Series` (Pillow).

Grey images stay grey (8- or 16-bit), everything else becomes RGB; EXIF orientation is applied.
There is no physical pixel size in these files: 1 mm pixels and an axial orientation are assumed
(with a warning). Pillow's decompression-bomb limit is enforced with the ingest pixel limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.deid import remap_uid
from data.errors import IngestError
from data.study import Series, Volume

__all__ = ["load_image", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_image(path: Path, name: str, *, max_pixels: int = 2**28) -> list[Series]:
    """Load a PNG / JPEG file as ``(I=width, J=height, 1)`` grey or ``(I, J, 1, 3)`` RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise IngestError(f"image is {img.width}x{img.height} pixels, the limit is {max_pixels} pixels.", name)
            img = ImageOps.exif_transpose(img)
            img.load()
            array = _to_array(img)
    except IngestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise IngestError(f"not a readable PNG/JPEG image ({type(exc).__name__}): truncated or not an image.", name) from None
    # (rows, cols[, 3]) → (i=column, j=row, k=1[, 3])
    array = array.T[:, :, None] if array.ndim == 2 else array.transpose(1, 0, 2)[:, :, None, :]
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    uid = remap_uid(f"file:{name}")
    volume = Volume(array=array, affine=_LPS_TO_RAS.copy(), modality="OT", series_uid=uid, description=stem,
                    meta={"source": "image", "spacing_source": "assumed", "orientation_assumed": True,
                          "deidentified": True})
    warning = "no physical pixel size in PNG/JPEG: 1 mm pixels assumed; measurements are not in mm."
    return [Series(uid=uid, modality="OT", description=stem, volume=volume, n_files=1, warnings=[warning],
                   source_format="image")]


def _to_array(img) -> np.ndarray:
    """Grey (``L``, 16-bit ``I;16``/``I``, float ``F``) as is; other modes → RGB uint8."""
    if img.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img)
        return array.astype(np.uint16) if img.mode.startswith("I;16") else array
    if img.mode in ("1", "LA"):
        return np.asarray(img.convert("L"))
    if img.mode == "P" and all(c[0] == c[1] == c[2] for c in _palette(img)):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))


def _palette(img) -> list[tuple[int, int, int]]:
    raw = img.getpalette() or []
    return [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]
