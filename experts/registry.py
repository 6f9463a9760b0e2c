"""The expert registry: names → factories, each expert built once and cached (thread-safe).

The agent and the app never construct experts themselves; they ask the registry, which loads each
model the first time it is needed (on CUDA when available, CPU otherwise) and keeps it::

    from experts.registry import default_registry
    reg = default_registry()
    reg.tool_schemas()                                   # tool definitions for the chat template
    result = reg.run("ct_segmentation", ct_volume, targets="liver")

Where the weights come from is one choice, ``registry_for(experts_dir)``: a site's experts folder (one
sub-folder per built-in expert, e.g. ``/models/experts/ct_segmentation/``, checked against its
``manifest.json`` when it loads), or ``None`` for the embedded bundle. With a site folder only its experts
are offered; the embedded ones fill the gaps only when ``embedded_fallback=True`` is asked for.
``configure_default_registry`` makes ``default_registry()`` (every command's registry) use a folder.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult

__all__ = ["ExpertRegistry", "default_registry", "registry_for", "configure_default_registry", "BUILTIN_EXPERTS",
           "EMBEDDED"]

# name → "module:factory" of the experts trained by this project (weights in experts/weights/<name>/)
BUILTIN_EXPERTS: dict[str, str] = {
    "ct_segmentation": "experts.ct_segmentation:CTSegmentationExpert",
    "mri_brain_tumor": "experts.mri_brain_tumor:BrainTumorExpert",
    "cxr_classification": "experts.cxr_classification:CXRClassificationExpert",
}
EMBEDDED = "embedded bundle"  # the source of an expert whose weights ship as package data


class ExpertRegistry:
    """Expert factories by name; ``get`` builds an expert on first use and caches it.

    A factory is any zero-argument callable returning an ``Expert`` (a class, a ``functools.partial``),
    or a ``"module:attribute"`` string imported on first use (so listing names loads no model).
    """

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], Expert] | str] = {}
        self._experts: dict[str, Expert] = {}
        self._lock = threading.RLock()
        self._name_locks: dict[str, threading.Lock] = {}
        self.sources: dict[str, str] = {}  # name → where its weights come from ("site folder", EMBEDDED, ...)

    def register(self, name: str, factory: Callable[[], Expert] | str, *, replace: bool = False, source: str = "") -> None:
        """Add an expert factory under ``name`` (``replace=True`` to swap one, dropping its cache); ``source`` says
        where its weights come from, for ``describe``."""
        if not name or not name.replace("_", "").isalnum():
            raise ExpertError(f"expert name must be letters, digits and underscores, got {name!r}.")
        with self._lock:
            if name in self._factories and not replace:
                raise ExpertError(f"an expert named {name!r} is already registered; pass replace=True to swap it.")
            self._factories[name] = factory
            self._experts.pop(name, None)
            self.sources[name] = source

    def names(self) -> list[str]:
        """Registered expert names, in registration order."""
        with self._lock:
            return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> Expert:
        """The expert ``name``, loaded once (concurrent callers wait for the same load)."""
        with self._lock:
            if name in self._experts:
                return self._experts[name]
            if name not in self._factories:
                raise ExpertError(f"unknown expert {name!r}; available experts: {', '.join(self._factories) or 'none'}.")
            name_lock = self._name_locks.setdefault(name, threading.Lock())
        with name_lock:  # one load per name; other names load in parallel
            with self._lock:
                if name in self._experts:
                    return self._experts[name]
                factory = self._factories[name]
            expert = _resolve(factory)()
            if not isinstance(expert, Expert):
                raise ExpertError(f"factory for {name!r} must return an Expert, got {type(expert).__name__}.")
            with self._lock:
                self._experts[name] = expert
            return expert

    def loaded(self) -> list[str]:
        """Names of the experts already built (for status pages)."""
        with self._lock:
            return list(self._experts)

    def describe(self) -> dict[str, dict[str, str]]:
        """name → ``{"version", "source"}`` of every registered expert, loading those not loaded yet (no paths:
        this is shown on the page and by ``/healthz``)."""
        return {name: {"version": self.get(name).version, "source": self.sources.get(name, "")} for name in self.names()}

    def tool_schemas(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Tool definitions (``{"type": "function", "function": {...}}``) for ``names`` (default: all)."""
        return [self.get(n).tool_schema() for n in (names if names is not None else self.names())]

    def run(self, name: str, volumes: Volume | Mapping[str, Volume], **arguments: Any) -> ExpertResult:
        """Validate ``arguments`` against the expert's schema and run it; raises ``ExpertError``."""
        return self.get(name).run(volumes, **arguments)


_DEFAULT: ExpertRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> ExpertRegistry:
    """The process-wide registry: the built-in experts from the folder given to ``configure_default_registry``,
    else from the embedded bundle."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = registry_for(None)
        return _DEFAULT


def configure_default_registry(experts_dir: str | Path | None, *, embedded_fallback: bool = False,
                               source: str = "site folder") -> ExpertRegistry:
    """Make ``default_registry()`` serve ``registry_for(experts_dir, ...)`` (the ``m3`` front door calls this with
    ``models.experts_dir`` before a command runs); returns it."""
    global _DEFAULT
    registry = registry_for(experts_dir, embedded_fallback=embedded_fallback, source=source)
    with _DEFAULT_LOCK:
        _DEFAULT = registry
    return registry


def registry_for(experts_dir: str | Path | None, *, embedded_fallback: bool = False,
                 source: str = "site folder") -> ExpertRegistry:
    """A new registry of the built-in experts with weights from ``experts_dir/<name>/``, or from the embedded
    bundle when ``experts_dir`` is ``None``.

    A site folder must hold at least one sub-folder named after a built-in expert (with its ``config.json``) and
    nothing named otherwise; experts it lacks are offered from the embedded bundle only with
    ``embedded_fallback=True``. ``source`` labels the folder's experts in ``describe`` ("site folder", "export").
    Each folder is checked against its ``manifest.json`` (``experts.manifest``) when its expert loads.
    Raises ``ExpertError`` naming the folder and what it should hold.
    """
    registry = ExpertRegistry()
    if experts_dir is None:
        for name, target in BUILTIN_EXPERTS.items():
            registry.register(name, target, source=EMBEDDED)
        return registry
    folder = Path(experts_dir)
    expected = ", ".join(f"{n}/" for n in BUILTIN_EXPERTS)
    if not folder.is_dir():
        raise ExpertError(f"experts folder {folder} does not exist; expected a folder holding {expected} "
                          "(as `m3 experts train --weights-root` writes); mount it or unset the experts folder.")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file())
    unknown = [n for n in found if n not in BUILTIN_EXPERTS]
    if unknown:
        raise ExpertError(f"experts folder {folder} holds {', '.join(unknown)}, which is no expert m3 knows; expected "
                          f"sub-folders among {expected}. Rename or remove it.")
    if not found:
        raise ExpertError(f"experts folder {folder} holds no expert; expected sub-folders among {expected}, each with "
                          "config.json, model.safetensors and manifest.json.")
    for name, target in BUILTIN_EXPERTS.items():
        if name in found:
            registry.register(name, functools.partial(_build_from_folder, target, str(folder)), source=source)
        elif embedded_fallback:
            registry.register(name, target, source=EMBEDDED)
    return registry


def _build_from_folder(target: str, weights_root: str) -> Expert:
    """A built-in expert class (``"module:Class"``) built on the weights under ``weights_root``."""
    return _resolve(target)(weights_root)  # type: ignore[call-arg]  # built-in experts take weights_root first


def _resolve(factory: Callable[[], Expert] | str) -> Callable[[], Expert]:
    if callable(factory):
        return factory
    import importlib

    module, _, attr = factory.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ExpertError(f"cannot import expert factory {factory!r}: {exc}.") from exc
