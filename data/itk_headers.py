"""NRRD and MetaImage headers checked before SimpleITK reads them.

ITK's readers trust their headers: ``NDims = -1`` makes MetaIO loop for ever, a data-file field may
name any file on the server (``ElementDataFile = /etc/passwd``, ``data file: ../../x``), and a
negative size wraps to four billion. :func:`check_itk_header` reads the text header (64 KiB at most)
and lets through only what a scanner or a toolkit writes: 2 to 4 dimensions with positive sizes, a
known element type and encoding, 1 or 3 components, and data in the same file or in a file beside
the header, named without a path.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.errors import IngestError

__all__ = ["check_itk_header"]

_MAX_HEADER = 1 << 16
_MAX_SIZE = 2**31 - 1
_MET_TYPES = {f"MET_{t}" for t in ("CHAR", "UCHAR", "SHORT", "USHORT", "INT", "UINT", "LONG", "ULONG", "LONG_LONG",
                                   "ULONG_LONG", "FLOAT", "DOUBLE")}
_MET_ARRAYS = {"ElementSpacing", "ElementSize", "Offset", "Origin", "Position", "CenterOfRotation", "TransformMatrix",
               "Rotation", "Orientation", "AnatomicalOrientation"}
_NRRD_TYPES = {"signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "short", "short int",
               "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
               "unsigned short int", "uint16", "uint16_t", "int", "signed int", "int32", "int32_t", "uint",
               "unsigned int", "uint32", "uint32_t", "longlong", "long long", "long long int", "signed long long",
               "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long",
               "unsigned long long int", "uint64", "uint64_t", "float", "double"}
_NRRD_ENCODINGS = {"raw", "gzip", "gz", "bzip2", "bz2", "ascii", "text", "txt"}
_BARE_NAME = re.compile(r"^[^/\\\s%.][^/\\\s%]*$")


def check_itk_header(path: Path, name: str) -> None:
    """Raise :class:`IngestError` unless ``path`` (``.mha``/``.mhd``/``.nrrd``/``.nhdr``) has a header
    SimpleITK can read safely."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(_MAX_HEADER)
    except OSError as exc:
        raise IngestError(f"file could not be read ({type(exc).__name__}); upload it again.", name) from None
    if name.lower().endswith((".nrrd", ".nhdr")):
        _check_nrrd(head, path, name)
    else:
        _check_metaimage(head, path, name)


def _check_metaimage(head: bytes, path: Path, name: str) -> None:
    fields: dict[str, str] = {}
    for line in head.split(b"\n"):
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        raise _bad(name, "MetaImage header has no ElementDataFile line in its first 64 KiB")
    ndims = _integer(fields.get("NDims"), name, "NDims")
    if not 2 <= ndims <= 4:
        raise _bad(name, f"NDims must be 2, 3 or 4, got {ndims}")
    _sizes(fields.get("DimSize", ""), ndims, name, "DimSize")
    if fields.get("ElementType") not in _MET_TYPES:
        raise _bad(name, f"ElementType must be one of MET_UCHAR, MET_SHORT, MET_FLOAT, ..., got {fields.get('ElementType')!r}")
    channels = _integer(fields.get("ElementNumberOfChannels", "1"), name, "ElementNumberOfChannels")
    if channels not in (1, 3):
        raise _bad(name, f"ElementNumberOfChannels must be 1 or 3, got {channels}")
    for key in _MET_ARRAYS & fields.keys():
        if len(fields[key].split()) > ndims * ndims:
            raise _bad(name, f"{key} has more than {ndims * ndims} values")
    data_file = fields["ElementDataFile"]
    if data_file != "LOCAL":
        _beside(data_file, path, name, "ElementDataFile")


def _check_nrrd(head: bytes, path: Path, name: str) -> None:
    lines = head.split(b"\n")
    if not lines[0].startswith(b"NRRD000"):
        raise _bad(name, "NRRD file must start with a NRRD000x magic line")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        text = line.decode("latin-1").rstrip("\r")
        if not text:
            break
        if text.startswith("#") or ":=" in text:
            continue  # comments and key/value pairs
        key, sep, value = text.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    else:
        raise _bad(name, "NRRD header does not end (no blank line) in its first 64 KiB")
    dimension = _integer(fields.get("dimension"), name, "dimension")
    if not 2 <= dimension <= 4:
        raise _bad(name, f"dimension must be 2, 3 or 4, got {dimension}")
    _sizes(fields.get("sizes", ""), dimension, name, "sizes")
    if fields.get("type", "").lower() not in _NRRD_TYPES:
        raise _bad(name, f"type {fields.get('type')!r} is not an NRRD pixel type")
    if fields.get("encoding", "").lower() not in _NRRD_ENCODINGS:
        raise _bad(name, f"encoding must be raw, gzip, bzip2 or ascii, got {fields.get('encoding')!r}")
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is not None:
        _beside(data_file, path, name, "data file")
    elif name.lower().endswith(".nhdr"):
        raise _bad(name, "a detached NRRD header (.nhdr) needs a 'data file' field")


def _integer(value: str | None, name: str, key: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise _bad(name, f"{key} must be a whole number, got {value!r}") from None


def _sizes(value: str, n: int, name: str, key: str) -> None:
    parts = value.split()
    if len(parts) != n:
        raise _bad(name, f"{key} must list {n} sizes, got {value!r}")
    for part in parts:
        size = _integer(part, name, key)
        if not 1 <= size <= _MAX_SIZE:
            raise _bad(name, f"{key} must be between 1 and {_MAX_SIZE}, got {size}")


def _beside(data_file: str, path: Path, name: str, key: str) -> None:
    """The data file must be a plain file name in the header's folder (never a path, a list or a pattern)."""
    if not _BARE_NAME.match(data_file) or data_file.upper() == "LIST" or not (path.parent / data_file).is_file():
        raise _bad(name, f"{key} must name a file uploaded beside the header, without a folder, a list or a "
                         f"pattern, got {data_file[:80]!r}")


def _bad(name: str, problem: str) -> IngestError:
    return IngestError(f"NRRD / MetaImage header refused: {problem}; export the image again (or as NIfTI).", name)
