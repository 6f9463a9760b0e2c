"""A model folder m3 writes (``m3 export``, ``m3 compress ...``) as it is handed over: readable by all, freshly signed.

safetensors writes its files 0600 whatever the umask (a temporary file renamed into place), so a build copied with its
permissions into the container (which runs as another user, uid 10001) could not be read. And a folder made from a
signed one starts with the source's ``manifest.json``, which lists the source's weights: ``m3 serve`` would refuse it.
``finish_model_folder`` fixes both once every file of the folder is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from experts.manifest import write_manifest

__all__ = ["FILE_MODE", "FOLDER_MODE", "finish_model_folder"]

FILE_MODE = 0o644  # owner writes, everyone reads: the serving user need not be the one that built the folder
FOLDER_MODE = 0o755


def finish_model_folder(folder: str | Path) -> Path:
    """Make every file under ``folder`` ``FILE_MODE`` and every sub-folder ``FOLDER_MODE``, then write its
    ``manifest.json`` (SHA-256 and size of each file, ``experts.manifest``). Call it last: a file written afterwards
    is "unlisted" to ``m3 serve``. Returns the manifest's path."""
    folder = Path(folder)
    os.chmod(folder, FOLDER_MODE)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, FOLDER_MODE if path.is_dir() else FILE_MODE)
    manifest = write_manifest(folder)
    os.chmod(manifest, FILE_MODE)
    return manifest
