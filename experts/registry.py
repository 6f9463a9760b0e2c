"""The expert registry: names → factories, each expert built once and cached (thread-safe).

The agent and the app never construct experts themselves; they ask the registry, which loads each
model the first time it is needed (on CUDA when available, CPU otherwise) and keeps it::

    from experts.registry import default_registry
    reg = default_registry()
    reg.tool_schemas()                                   # tool definitions for the chat template
    result = reg.run("ct_segmentation", ct_volume, targets="liver")
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult

__all__ = ["ExpertRegistry", "default_registry", "BUILTIN_EXPERTS"]

# name → "module:factory" of the experts trained by this project (weights in experts/weights/<name>/)
BUILTIN_EXPERTS: dict[str, str] = {
    "ct_segmentation": "experts.ct_segmentation:CTSegmentationExpert",
    "mri_brain_tumor": "experts.mri_brain_tumor:BrainTumorExpert",
    "cxr_classification": "experts.cxr_classification:CXRClassificationExpert",
}


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

    def register(self, name: str, factory: Callable[[], Expert] | str, *, replace: bool = False) -> None:
        """Add an expert factory under ``name`` (``replace=True`` to swap one, dropping its cache)."""
        if not name or not name.replace("_", "").isalnum():
            raise ExpertError(f"expert name must be letters, digits and underscores, got {name!r}.")
        with self._lock:
            if name in self._factories and not replace:
                raise ExpertError(f"an expert named {name!r} is already registered; pass replace=True to swap it.")
            self._factories[name] = factory
            self._experts.pop(name, None)

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

    def tool_schemas(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Tool definitions (``{"type": "function", "function": {...}}``) for ``names`` (default: all)."""
        return [self.get(n).tool_schema() for n in (names if names is not None else self.names())]

    def run(self, name: str, volumes: Volume | Mapping[str, Volume], **arguments: Any) -> ExpertResult:
        """Validate ``arguments`` against the expert's schema and run it; raises ``ExpertError``."""
        return self.get(name).run(volumes, **arguments)


_DEFAULT: ExpertRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> ExpertRegistry:
    """The process-wide registry holding the three built-in experts."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            reg = ExpertRegistry()
            for name, target in BUILTIN_EXPERTS.items():
                reg.register(name, target)
            _DEFAULT = reg
        return _DEFAULT


def _resolve(factory: Callable[[], Expert] | str) -> Callable[[], Expert]:
    if callable(factory):
        return factory
    import importlib

    module, _, attr = factory.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ExpertError(f"cannot import expert factory {factory!r}: {exc}.") from exc
