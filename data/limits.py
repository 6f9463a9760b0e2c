"""Resource limits on one upload, checked from headers before pixel memory is allocated.

One :class:`IngestLimits` (with its :class:`ArchiveLimits`) goes into ``load_study`` / ``load_studies``.
Every limit is checked against what a header claims — frames, rows × columns × frames × bytes, NIfTI
dimensions × bytes, the inflated size of deflated DICOM and ``.nii.gz`` — so a 1 KB file that claims
gigabytes fails in microseconds. Exceeding one raises :class:`IngestError` naming the limit and the
setting that raises it. The defaults load a 2,000-slice 512 × 512 CT (1 GiB of int16) with room to spare.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from data.errors import IngestError

__all__ = ["ArchiveLimits", "IngestLimits", "ImageBudget", "format_bytes"]

_MiB, _GiB = 2**20, 2**30


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits on one ``.zip`` archive (sizes in bytes)."""

    max_entries: int = 50_000
    max_uncompressed_bytes: int = 16 * _GiB
    max_ratio: float = 200.0  # uncompressed ÷ compressed, per entry (entries over 1 MiB) and in total
    min_ratio_check_bytes: int = _MiB

    def __post_init__(self) -> None:
        _check_positive(self)


@dataclass(frozen=True)
class IngestLimits:
    """Limits on one upload (sizes in bytes). Exceeding one raises :class:`IngestError`."""

    max_upload_bytes: int = 8 * _GiB  # files as uploaded (a .zip counts compressed)
    max_files: int = 50_000
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    max_frames_per_file: int = 50_000  # DICOM Number of Frames
    max_image_bytes_per_file: int = 2 * _GiB  # decoded pixels of one file (rows × columns × frames × bytes)
    max_image_bytes: int = 8 * _GiB  # decoded pixels of the whole upload
    max_inflation_ratio: float = 64.0  # decoded ÷ stored bytes of compressed data (bombs) ...
    min_inflation_check_bytes: int = 128 * _MiB  # ... checked once the decoded size passes this
    max_header_bytes: int = 64 * _MiB  # NIfTI header + extensions (vox_offset)
    max_image_pixels: int = 2**26  # PNG / JPEG width × height (8192 × 8192)
    max_voxels: int = 2**31  # per NIfTI / ITK file
    max_volumes_per_file: int = 64  # 4D NIfTI: later volumes are not read
    workers: int = 8  # threads reading and decoding pixel data

    def __post_init__(self) -> None:
        _check_positive(self)

    def check_image_bytes(self, decoded: int, name: str, what: str, *, stored: int | None = None) -> None:
        """Refuse a file whose decoded pixels (``decoded`` bytes, from its header) are over the per-file
        limit, or that would expand more than ``max_inflation_ratio``-fold from ``stored`` bytes."""
        if decoded > self.max_image_bytes_per_file:
            raise IngestError(f"{what} needs {format_bytes(decoded)} once decoded, the limit is "
                              f"{format_bytes(self.max_image_bytes_per_file)} per file; the header may be damaged, "
                              "or raise IngestLimits.max_image_bytes_per_file to load it.", name)
        if stored is not None and decoded > self.min_inflation_check_bytes \
                and decoded > self.max_inflation_ratio * max(stored, 1):
            raise IngestError(f"{what} would expand {decoded / max(stored, 1):.0f}-fold, from "
                              f"{format_bytes(stored)} to {format_bytes(decoded)}; the limit is "
                              f"{self.max_inflation_ratio:g}-fold (decompression bomb or damaged header); raise "
                              "IngestLimits.max_inflation_ratio to load it.", name)

    def inflated_budget(self, stored: int) -> int:
        """Most bytes a compressed file of ``stored`` bytes may inflate to (deflated DICOM, ``.nii.gz``)."""
        by_ratio = max(self.min_inflation_check_bytes, int(self.max_inflation_ratio * stored))
        return min(self.max_image_bytes_per_file + self.max_header_bytes, by_ratio)


class ImageBudget:
    """Decoded bytes the files of one upload may still take (``IngestLimits.max_image_bytes``)."""

    def __init__(self, limits: IngestLimits) -> None:
        self.limit = limits.max_image_bytes
        self.used = 0

    def take(self, nbytes: int, name: str | None = None) -> None:
        """Count ``nbytes`` of decoded pixels; :class:`IngestError` when the upload's total passes the limit."""
        if self.used + nbytes > self.limit:
            raise IngestError(f"the upload's images need more than {format_bytes(self.limit)} once decoded "
                              f"({format_bytes(self.used + nbytes)} so far); upload fewer series at a time or raise "
                              "IngestLimits.max_image_bytes.", name)
        self.used += nbytes


def format_bytes(n: float) -> str:
    """``n`` bytes as B / KiB / MiB / GiB / TiB with three significant figures."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} TiB"


def _check_positive(limits) -> None:
    for f in fields(limits):
        value = getattr(limits, f.name)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"{type(limits).__name__}.{f.name} must be > 0, got {value!r}.")
