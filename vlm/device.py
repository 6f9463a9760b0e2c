"""Where a model runs and in which precision: one answer for every command that loads one.

``--device`` / ``--dtype`` on ``m3 serve``, ``demo``, ``chat``, ``ask``, ``eval`` and ``serve-lm``, and
``models.device`` / ``models.dtype`` in the app's config, are resolved here::

    resolve_device("auto")               # Placement(cuda, bfloat16) on a GPU with bf16, Placement(cpu, float32) otherwise
    resolve_device("cpu", "bfloat16")    # Placement(cpu, bfloat16)
    resolve_device("cuda")               # DeviceError on a machine without CUDA

``from_pretrained_kwargs(placement)`` turns a placement into the keyword arguments of a Hugging Face
``from_pretrained``: the dtype the weights are read in (no float32 copy of bf16 weights), and on CUDA
``device_map`` (accelerate places large checkpoints over the GPUs as they load) with low CPU memory.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, NamedTuple

from data.errors import M3Error

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "Placement", "DEVICE_CHOICES", "DTYPE_CHOICES", "check_placement_names", "resolve_device",
           "from_pretrained_kwargs"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # and "cuda:N"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
           "fp16": "float16"}  # accepted name → torch attribute


class DeviceError(M3Error):
    """A device or precision this machine cannot give (``--device cuda`` without a GPU, an unknown dtype)."""


class Placement(NamedTuple):
    """Where the model's parameters live (``device``) and their dtype."""

    device: torch.device
    dtype: torch.dtype


def check_placement_names(device: str, dtype: str) -> None:
    """Raise ``DeviceError`` unless ``device`` is auto / cpu / cuda / cuda:N and ``dtype`` one of ``DTYPE_CHOICES``
    (names only: whether this machine has the device is ``resolve_device``'s question)."""
    _device_name(device)
    _dtype_name(dtype)


def resolve_device(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> Placement:
    """The placement ``device`` and ``dtype`` ask for on this machine.

    device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N". dtype: "auto" (bfloat16 on a GPU
    that supports it, float16 on one that does not, float32 on CPU), "float32", "bfloat16" or "float16".
    Raises ``DeviceError`` for a CUDA device this machine does not have and for an unknown name.
    """
    import torch  # here, not at the top: app.config checks the names without loading torch

    where = device if isinstance(device, torch.device) else _device_name(device)
    if where == "auto":
        where = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(where)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {str(where)!r} (--device / models.device) needs a CUDA GPU, but this machine has none that torch "
                f"{torch.__version__} can use (torch.cuda.is_available() is False). Use --device cpu or auto, or install "
                "a CUDA build of torch and the GPU driver."
            )
        if target.index is not None and target.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceError(f"device {str(where)!r} (--device / models.device) must name one of the {count} GPU(s) of this "
                              f"machine (cuda:0 to cuda:{count - 1}); pick one of them or use --device cuda.")
    elif target.type != "cpu":
        raise DeviceError(f"device (--device / models.device) must be one of {', '.join(DEVICE_CHOICES)} or cuda:N, "
                          f"got {str(where)!r}.")
    if isinstance(dtype, torch.dtype):
        return Placement(target, dtype)
    name = _dtype_name(dtype)
    if name != "auto":
        return Placement(target, getattr(torch, _DTYPES[name]))
    if target.type == "cuda":
        return Placement(target, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Placement(target, torch.float32)


def from_pretrained_kwargs(placement: Placement) -> dict[str, Any]:
    """Keyword arguments for a Hugging Face ``from_pretrained`` that read the weights straight into ``placement``:
    ``dtype``; with accelerate installed, ``low_cpu_mem_usage`` and, on CUDA, ``device_map`` ("auto" over the
    GPUs for plain "cuda", the one GPU for "cuda:N"). Without accelerate the caller moves the model itself."""
    kwargs: dict[str, Any] = {"dtype": placement.dtype}
    if importlib.util.find_spec("accelerate") is None:
        return kwargs
    kwargs["low_cpu_mem_usage"] = True  # transformers < 5 only; later versions always load this way and drop it
    if placement.device.type == "cuda":
        kwargs["device_map"] = "auto" if placement.device.index is None else {"": str(placement.device)}
    return kwargs


def _device_name(device: str) -> str:
    name = str(device).strip().lower()
    if name in DEVICE_CHOICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise DeviceError(f"device (--device / models.device) must be one of {', '.join(DEVICE_CHOICES)} or cuda:N "
                      f"(cuda:0, cuda:1 ...), got {device!r}.")


def _dtype_name(dtype: str) -> str:
    name = str(dtype).strip().lower()
    if name == "auto" or name in _DTYPES:
        return name
    raise DeviceError(f"dtype (--dtype / models.dtype) must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}.")
