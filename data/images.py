"""PNG / JPEG images → a 2D :class:`Series` (Pillow).

Grey images stay grey (8- or 16-bit), everything else becomes RGB; EXIF orientation is applied.
There is no physical pixel size in these files: 1 mm pixels and an axial orientation are assumed
(with a warning). The size in the file's header is checked against :class:`~data.limits.IngestLimits`
(pixels, decoded bytes, expansion over the file's size) before any pixel is decoded; only the PNG and
JPEG decoders are tried, whatever the file holds.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np

from data.deid import remap_uid
from data.errors import IngestError
from data.limits import ImageBudget, IngestLimits
from data.study import Series, Volume

__all__ = ["load_image", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Pillow's DEBUG logs quote EXIF / TIFF tag values (artist, description: names, dates): never below INFO here.
logging.getLogger("PIL").setLevel(max(logging.INFO, logging.getLogger("PIL").level))
_FORMATS = ("PNG", "JPEG")
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBX": 4,
                    "CMYK": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}


def load_image(path: Path, name: str, *, limits: IngestLimits | None = None,
               budget: ImageBudget | None = None) -> list[Series]:
    """Load a PNG / JPEG file as ``(I=width, J=height, 1)`` grey or ``(I, J, 1, 3)`` RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limits = limits or IngestLimits()
    try:
        with Image.open(path, formats=_FORMATS) as img:
            pixels = img.width * img.height
            if pixels > limits.max_image_pixels:
                raise IngestError(f"image is {img.width}x{img.height} pixels, the limit is {limits.max_image_pixels} "
                                  "pixels; raise IngestLimits.max_image_pixels to load it.", name)
            # decoded mode, its RGB/grey copy and the array: three buffers at most
            decoded = pixels * (_BYTES_PER_PIXEL.get(img.mode, 4) + 3 + 4)
            limits.check_image_bytes(decoded, name, f"{img.width}x{img.height} image", stored=path.stat().st_size)
            if budget is not None:
                budget.take(decoded, name)
            img = ImageOps.exif_transpose(img)
            img.load()
            array = _to_array(img)
    except IngestError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, in open(), for sizes far over ours
        raise IngestError(f"image is larger than {limits.max_image_pixels} pixels; raise "
                          "IngestLimits.max_image_pixels to load it.", name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, TypeError, KeyError,
            IndexError, ZeroDivisionError) as exc:
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
