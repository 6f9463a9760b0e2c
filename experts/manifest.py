"""Integrity of a model folder: ``manifest.json`` lists the SHA-256 and size of every file in it.

The rule for shipped and exported folders: the manifest covers every file, model card and metrics included,
because the card's intended use is what the app shows clinicians. A folder is written whole (``m3 export``,
``m3 experts train``) and its manifest last; a card or a metrics file edited afterwards is signed again with
``m3 manifest write FOLDER`` in the same change, and ``make test`` verifies every shipped folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.errors import M3Error

__all__ = ["MANIFEST_FILENAME", "ManifestError", "write_manifest", "verify_manifest"]

MANIFEST_FILENAME = "manifest.json"
_FORMAT = "m3-build-manifest-v1"


class ManifestError(M3Error):
    """A model folder whose files do not match its manifest: altered, or copied incompletely."""


def write_manifest(folder: str | Path) -> Path:
    """Write ``manifest.json``: SHA-256 and byte size of every file under ``folder`` (except the manifest)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILENAME}
    path = folder / MANIFEST_FILENAME
    path.write_text(json.dumps({"format": _FORMAT, "files": files}, indent=2) + "\n")
    return path


def verify_manifest(folder: str | Path) -> dict:
    """Check every file of ``folder`` against its manifest; raise :class:`ManifestError` on any difference.

    Missing, changed (size or SHA-256) and unlisted files are all errors; so is a manifest that is not one.
    Returns the manifest.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILENAME
    if not path.is_file():
        raise ManifestError(f"Model folder {folder} has no {MANIFEST_FILENAME}; it was not written by `m3 export`. "
                            "Re-export the model, or sign the folder with `m3 manifest write`.")
    try:
        manifest = json.loads(path.read_text())
        listed = {rel: (int(e["bytes"]), str(e["sha256"])) for rel, e in manifest["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"Model folder {folder} has an unreadable {MANIFEST_FILENAME} ({type(exc).__name__}); "
                            "re-export the model.") from None
    problems = []
    for rel, (size, digest) in listed.items():
        file = folder / rel
        if not file.is_file():
            problems.append(f"missing {rel}")
        elif file.stat().st_size != size or _sha256(file) != digest:
            problems.append(f"changed {rel}")
    extra = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILENAME
             and p.relative_to(folder).as_posix() not in listed]
    problems += [f"unlisted {rel}" for rel in sorted(extra)]
    if problems:
        raise ManifestError(
            f"Model folder {folder} does not match its manifest ({len(problems)} problem(s): {', '.join(problems[:5])}). "
            "Expected every file unchanged since it was written; copy the folder again from the release or re-export it."
        )
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
