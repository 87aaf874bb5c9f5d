"""Window scoring with ONNX Runtime.

The scorer is synchronous and thread-safe for concurrent :meth:`Scorer.score` calls (ONNX
Runtime sessions are); the service calls it from a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from monitor.bundle import INPUT_NAME, OUTPUT_SCORE, OUTPUT_SENSOR_ERROR, Bundle
from monitor.errors import BundleError, DependencyError

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

#: Batch sizes the IO-binding path pads to. On a GPU few distinct shapes mean kernels and memory
#: plans are reused rather than re-planned for every batch size; larger batches are split.
BUCKETS = (32, 128, 512, 2048, 8192)
#: Windows per ONNX Runtime run on CPU, where larger batches are split: on one core the dense
#: AE scored ~10 % fewer windows/s at 8192 than at 1024-2048 (its activations no longer fit
#: the caches), and the service at 8 sensors made 9 % more readings/s with 2048 than with
#: 8192 (bench/results/performance.md, session 11).
CPU_BATCH = 2048


def bucket_size(n: int) -> int:
    """The smallest bucket that holds ``n`` windows (``n`` at most ``BUCKETS[-1]``)."""
    for size in BUCKETS:
        if n <= size:
            return size
    raise ValueError(f"{n} windows exceed the largest bucket {BUCKETS[-1]}")


@dataclass(frozen=True)
class Scores:
    """Scores of a batch of windows."""

    score: npt.NDArray[np.float32]  # [batch]
    sensor_error: npt.NDArray[np.float32]  # [batch, n_features]


def cpu_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity where the platform tells, capped by a
    cgroup CPU quota (a container's ``limits.cpu``, which the affinity does not show)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota under ``root`` (v2 ``cpu.max``, else v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without a quota or cgroups."""
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        fields = []
    try:
        if len(fields) == 2:
            return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def scoring_plan(
    device: Device, workers: int, threads: int, available: list[str], cores: int
) -> tuple[int, int]:
    """How many batches to score at once, and ONNX Runtime intra-op threads for each (0: its
    default, all cores), for the model settings ``workers`` and ``threads`` (0: auto).

    On CPU the default is one single-threaded run per core. A run on several intra-op threads
    waits at every parallel operator for its slowest thread, and beside the service's event
    loop one of them is often descheduled; separate runs do not wait for each other
    (bench/results/performance.md, session 11). With CUDA one batch at a time: the device
    runs it, and more would only queue there.
    """
    if device != "cpu" and CUDA in available:
        return workers or 1, threads
    if not workers:
        workers = max(1, cores // threads) if threads else cores
    if not threads and workers > 1:
        threads = max(1, cores // workers)
    return workers, threads


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime."""
    return list(_import_onnxruntime().get_available_providers())


def _import_onnxruntime() -> onnxruntime:
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(
            "onnxruntime is not installed: pip install 'plantwatch[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def choose_providers(device: Device, available: list[str]) -> list[str]:
    """Execution providers for ``device`` given what this onnxruntime build offers.

    ``cuda`` without a CUDA-capable build falls back to CPU with a warning rather than failing:
    a monitor that scores slowly beats one that does not start.
    """
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        logger.warning(
            "CUDA execution provider not available in this onnxruntime (%s); scoring on CPU",
            ", ".join(available),
        )
    return [CPU]


class Scorer:
    """Scores raw windows ``[batch, length, n_features]`` with a verified bundle's graph."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: Device = "auto",
        threads: int = 0,
        io_binding: bool | None = None,
        spinning: bool = True,
    ) -> None:
        """``spinning``: whether ONNX Runtime's pool threads spin between runs (its default,
        fastest for a caller that only scores); the service turns it off."""
        ort = _import_onnxruntime()
        self._ort = ort
        self.bundle = bundle
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(
                str(bundle.onnx_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise BundleError(f"{bundle.onnx_path}: ONNX Runtime cannot load it ({exc})") from None
        #: The provider actually used, after any fallback inside onnxruntime.
        self.provider: str = self._session.get_providers()[0]
        m = bundle.manifest
        shape = self._session.get_inputs()[0].shape
        if self._session.get_inputs()[0].name != INPUT_NAME or len(shape) != 3:
            raise BundleError(f"{bundle.onnx_path}: graph input is not '{INPUT_NAME}' [b, t, f]")
        if shape[1:] != [m.window.length, m.n_features]:
            raise BundleError(
                f"{bundle.onnx_path}: graph expects windows {shape[1:]}, manifest says "
                f"[{m.window.length}, {m.n_features}]"
            )
        #: Score through IOBinding with bucketed batch sizes (default: on CUDA only).
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        #: The most windows a caller should pass at once (larger batches are not faster).
        self.max_batch = BUCKETS[-1] if self.provider == CUDA else CPU_BATCH
        self._device_type = "cuda" if self.provider == CUDA else "cpu"
        logger.info(
            "scoring %s with %s%s",
            m.model.name,
            self.provider,
            " (IOBinding, bucketed batches)" if self.io_binding else "",
        )

    @property
    def window_shape(self) -> tuple[int, int]:
        m = self.bundle.manifest
        return m.window.length, m.n_features

    def score(self, windows: npt.NDArray[np.float32]) -> Scores:
        """Score a batch of raw windows (feature order as in the manifest)."""
        if windows.ndim != 3 or windows.shape[1:] != self.window_shape:
            raise ValueError(f"windows of shape {windows.shape}, expected [b, {self.window_shape}]")
        if self.io_binding:
            return self._score_bound(windows)
        feed = {INPUT_NAME: np.ascontiguousarray(windows, dtype=np.float32)}
        score, sensor_error = self._session.run([OUTPUT_SCORE, OUTPUT_SENSOR_ERROR], feed)
        return Scores(score=score, sensor_error=sensor_error)

    def _score_bound(self, windows: npt.NDArray[np.float32]) -> Scores:
        """Pad each chunk to its bucket, bind input and outputs on the device, copy back once."""
        n = len(windows)
        length, n_features = self.window_shape
        score = np.empty(n, dtype=np.float32)
        sensor_error = np.empty((n, n_features), dtype=np.float32)
        step = BUCKETS[-1]
        for start in range(0, n, step):
            chunk = windows[start : start + step]
            k = len(chunk)
            padded = np.zeros((bucket_size(k), length, n_features), dtype=np.float32)
            padded[:k] = chunk
            binding = self._session.io_binding()
            value = self._ort.OrtValue.ortvalue_from_numpy(padded, self._device_type, 0)
            binding.bind_ortvalue_input(INPUT_NAME, value)
            binding.bind_output(OUTPUT_SCORE, self._device_type)
            binding.bind_output(OUTPUT_SENSOR_ERROR, self._device_type)
            self._session.run_with_iobinding(binding)
            got_score, got_error = binding.copy_outputs_to_cpu()
            score[start : start + k] = got_score[:k]
            sensor_error[start : start + k] = got_error[:k]
        return Scores(score=score, sensor_error=sensor_error)
