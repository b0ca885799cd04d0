"""How a run uses its device: float32 precision on CUDA, the opt-in deterministic mode, and their record.

:func:`configure_torch` is called by :func:`flhelpers.fl.engine.build_experiment` before anything
touches the device. It sets torch's process-wide flags to what the config says, so a run's
settings never depend on an earlier run in the same process:

* **Float32 means IEEE float32 on CUDA.** PyTorch lets cuDNN convolutions and the cuDNN LSTM use
  TF32 (10-bit mantissa products) by default on Ampere and later GPUs. With
  ``precision="float32"`` on CUDA, convolutions, the LSTM and matrix products are set to IEEE
  float32 (``torch.backends.cudnn.conv/rnn.fp32_precision = "ieee"``,
  ``torch.backends.cuda.matmul.fp32_precision = "ieee"``, and the legacy ``allow_tf32`` flags
  False, so that code reading either API agrees). With ``"bfloat16"`` the autocast regions run in
  bfloat16 anyway and the float32 rest gets torch's defaults (TF32 convolutions, IEEE matrix
  products). The CPU never uses TF32; nothing is changed there.
* **Deterministic mode** (``ExperimentConfig.deterministic``, default off):
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set before CUDA starts, when it is not already set to a
  deterministic value), ``torch.use_deterministic_algorithms(True)`` (an operation with no
  deterministic kernel raises instead of running), ``cudnn.deterministic = True``; cuDNN's
  benchmark (timing-based choice of kernels) is off in both modes.

:func:`runtime_record` is what ``config.json`` keeps under ``"runtime"`` (the device, CUDA and
cuDNN versions, the precision flags, the mode, the vectorized chunk used), outside the run id;
:func:`resume_key` is what a checkpoint keeps, and :func:`resume_problem` says why a checkpoint
written under another device or mode must not be resumed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

#: the ``CUBLAS_WORKSPACE_CONFIG`` values that make cuBLAS deterministic (CUDA >= 10.2)
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


def set_float32_precision(ieee: bool) -> None:
    """IEEE float32 (``ieee=True``) or torch's defaults (TF32 cuDNN, IEEE matmul) for CUDA float32.

    The legacy flags are set first and the per-operation ones (``fp32_precision``, torch >= 2.9)
    after, so that both APIs read the same setting.
    """
    torch.backends.cudnn.allow_tf32 = not ieee
    torch.backends.cuda.matmul.allow_tf32 = False
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        torch.backends.cudnn.conv.fp32_precision = "ieee" if ieee else "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "ieee" if ieee else "tf32"
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def precision_flags() -> dict[str, Any]:
    """torch's current CUDA float32 settings: per operation (when this torch has them) and legacy."""
    flags: dict[str, Any] = {}
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        flags.update(cudnn_conv=torch.backends.cudnn.conv.fp32_precision,
                     cudnn_rnn=torch.backends.cudnn.rnn.fp32_precision,
                     cuda_matmul=torch.backends.cuda.matmul.fp32_precision)
    try:
        flags.update(cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                     matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    except RuntimeError:  # torch refuses to read the legacy flag after a mix of the two APIs
        pass
    return flags


def set_deterministic(on: bool, device: torch.device) -> None:
    """Deterministic kernels only (``on``) or torch's defaults; cuDNN benchmarking off either way."""
    if on and device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in DETERMINISTIC_CUBLAS:
        if torch.cuda.is_initialized():
            warnings.warn("deterministic=True, but CUDA started before CUBLAS_WORKSPACE_CONFIG was set: cuBLAS "
                          "may keep a non-deterministic workspace. Start the process with "
                          "CUBLAS_WORKSPACE_CONFIG=:4096:8 in its environment.", RuntimeWarning, stacklevel=3)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS[0]
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def configure_torch(cfg: Any) -> None:
    """Set torch's process-wide flags for ``cfg`` (module docstring): the mode on every device,
    the float32 precision on CUDA."""
    device = torch.device(cfg.device)
    set_deterministic(bool(cfg.deterministic), device)
    if device.type == "cuda":
        set_float32_precision(cfg.precision == "float32")


def total_memory_bytes(device: torch.device | str) -> int:
    """The device's total memory: the GPU's on CUDA, ``MemTotal`` on the CPU (4 GiB if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def device_record(device: torch.device | str) -> dict[str, Any]:
    """The device a run trains on: its name, and on CUDA its capability, memory, CUDA and cuDNN versions."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"type": device.type, "name": device.type}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}",
            "total_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def resume_key(exp: Any) -> dict[str, Any]:
    """What must be the same to resume ``exp``'s run: device, versions, precision, mode, chunk."""
    device = device_record(exp.device)
    return {"device": device, "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
            "precision_flags": precision_flags() if device["type"] == "cuda" else {},
            "peers_per_step": getattr(exp.trainer, "peers_per_step", None)}


def runtime_record(exp: Any) -> dict[str, Any]:
    """``config.json``'s ``"runtime"``: :func:`resume_key` plus the CUBLAS workspace setting."""
    return {**resume_key(exp), "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def resume_problem(saved: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """Why a checkpoint written under ``saved`` (its :func:`resume_key`) must not continue under
    ``current``: the differing entries, or None. A checkpoint without the key (written before
    it existed, on the CPU) is accepted."""
    if saved is None:
        return None
    diffs = [f"{key} {saved.get(key)!r} then, {current.get(key)!r} now" for key in sorted(current)
             if saved.get(key) != current.get(key)]
    return "; ".join(diffs) or None
