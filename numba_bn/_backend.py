"""The backend protocol: what a device offers the modules and the functional API.

A backend owns one kind of array (NumPy on ``"cpu"``, ``numba.cuda`` device
arrays on ``"cuda"``) and implements batch normalisation on it in three steps
with the same signatures and result types on every device:

1. ``batch_statistics(x, channel_axis)`` -> :class:`BatchStatistics`
2. ``forward(x, channel_axis, statistics, weight, bias, eps, running=...)`` -> ``(y, SavedForward)``,
   normalising with a :class:`BatchStatistics` or a :class:`RunningStatistics`, and
   blending the batch's statistics into the running buffers of a :class:`RunningUpdate`
3. ``backward(saved, grad_output, weight_grad_dtype, combine_totals)`` -> :class:`Gradients`

plus the array handling around them: recognising and checking its arrays,
moving values between the host and the device, filling. The API layer
chooses a backend once - from ``device`` in a module's constructor and
``to()``, from the input's type in the functional API - and then calls it
without asking which device it is.

The backends live in ``numba_bn.cpu.backend`` and ``numba_bn.cuda.backend``;
the CUDA one is imported only when CUDA is used, so ``import numba_bn`` works
on machines without it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Protocol

import numpy as np

from ._device_arrays import is_device_array
from ._typing import Array
from ._validation import describe_type

DEVICES = ("cpu", "cuda")


class BatchStatistics(NamedTuple):
    """Per-channel statistics of a batch, as float64 ``(C,)`` arrays of the backend's device.

    ``batch_statistics(x, axis, merge=False)`` may instead return the
    reduction's per-part ``(count, mean, M2)`` states, unmerged, in ``parts``
    (``mean`` and ``m2`` are then None): the backend's ``forward`` merges them
    in the kernel that also computes the coefficients, which saves a launch on
    the GPU. Such statistics live in the stream's staging buffer: hand them to
    ``forward`` before the next reduction on that stream.
    """

    count: int  # values per channel
    mean: Any  # NaN when count == 0
    m2: Any  # sum of squared deviations from the mean
    parts: Any = None  # (3, C, parts) float64 states merged in part order, or None when merged


class RunningUpdate(NamedTuple):
    """Running buffers for a training forward to update in place: ``(1 - factor) * running + factor * batch``,
    with the batch's unbiased variance."""

    mean: Any
    var: Any
    factor: float  # the momentum, or 1 / num_batches_tracked for a cumulative average


class RunningStatistics(NamedTuple):
    """Running buffers used as the normalising statistics (evaluation mode); any float dtype."""

    mean: Any
    var: Any


class SavedForward(NamedTuple):
    """What a backward needs from its forward: references and O(C) float64 vectors."""

    x: Any  # a reference to the caller's input, not a copy
    channel_axis: int
    batch_stats: bool  # normalised with the batch's statistics (else constants)
    mean: Any
    invstd: Any
    weight: Any  # a snapshot of the weight at forward time (ones without one)
    count: int  # values per channel
    input_sample: Optional[bytes]  # to notice an input modified before backward, where checked
    relu_mask: Optional[Any] = None  # a fused ReLU's record of where its result was not <= 0 (a bit per value)
    residual: bool = False  # a residual was added: backward also returns its gradient


class Gradients(NamedTuple):
    """A backward's results on the backend's device."""

    grad_input: Any
    grad_weight: Optional[Any]  # sum(dy * xhat), None unless requested
    grad_bias: Optional[Any]  # sum(dy), None unless requested
    grad_residual: Optional[Any] = None  # after a forward with a residual


class NormalizingTerms(NamedTuple):
    """What the forward's per-channel kernel reads: the variance is ``spread / divisor``."""

    mean: Any
    spread: Any  # M2 (batch statistics) or a running variance
    divisor: float  # the count, NaN for an empty batch; 1.0 for a running variance
    count: int  # values per channel of the input
    batch_stats: bool


def normalizing_terms(x: Array, channel_axis: int, statistics: BatchStatistics | RunningStatistics) -> NormalizingTerms:
    """The forward's per-channel inputs, the same for every backend."""
    if isinstance(statistics, RunningStatistics):
        channels = x.shape[channel_axis]
        count = x.size // channels if channels else math.prod(x.shape[:channel_axis] + x.shape[channel_axis + 1 :])
        return NormalizingTerms(statistics.mean, statistics.var, 1.0, count, False)
    # NaN, never a division by zero, for an empty batch (the CUDA simulator divides in Python).
    divisor = float(statistics.count) if statistics.count else math.nan
    return NormalizingTerms(statistics.mean, statistics.m2, divisor, statistics.count, True)


class Backend(Protocol):
    """The operations every device implements (see the module docstring)."""

    device: str

    # ------------------------------------------------------------ arrays
    def as_array(self, name: str, value: Any) -> Array:
        """``value`` as this device's array type (no copy), or TypeError naming the fix."""

    def check_vector(
        self, name: str, value: Any, channels: int, dtype: Optional[np.dtype] = None, writeable: bool = False
    ) -> Array:
        """A ``(channels,)`` float vector of this device, of exactly ``dtype`` when given."""

    def from_host(self, values: np.ndarray, dtype: np.dtype) -> Array:
        """A new array of this device holding ``values`` cast to ``dtype``."""

    def to_host(self, array: Array) -> np.ndarray:
        """A new NumPy array with ``array``'s values (waits for queued work)."""

    def can_assign(self, target: Any, values: np.ndarray) -> bool:
        """Whether :meth:`assign` can copy ``values`` into ``target``: an array of this device,
        writeable, of the same shape and dtype."""

    def assign(self, target: Array, values: np.ndarray) -> None:
        """Copy host ``values`` into ``target`` in place (see :meth:`can_assign`)."""

    def fill(self, target: Array, value: float) -> None:
        """Set every element of ``target`` to ``value``, in place."""

    def shares_memory(self, a: Array, b: Array) -> bool:
        """Whether ``a`` and ``b`` may share memory (an output written over an input)."""

    # --------------------------------------------------------- the steps
    def batch_statistics(self, x: Array, channel_axis: int, merge: bool = True) -> BatchStatistics:
        """Per-channel count, mean and M2 of ``x`` (Welford/Chan, float64); with ``merge=False`` the
        backend may leave the merge to ``forward`` (see :class:`BatchStatistics`)."""

    def forward(
        self, x: Array, channel_axis: int, statistics: BatchStatistics | RunningStatistics,
        weight: Optional[Array], bias: Optional[Array], eps: float, save: bool = True, out: Optional[Array] = None,
        residual: Optional[Array] = None, relu: bool = False, running: Optional[RunningUpdate] = None,
    ) -> tuple[Array, Optional[SavedForward]]:
        """``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, and what backward needs.

        With ``running`` (batch statistics of a non-empty batch only) the
        running buffers are blended with the batch's mean and unbiased
        variance as well; if the call raises they keep their values.

        With a ``residual`` (``x``'s shape and dtype, any strides) ``y`` is
        ``bn(x) + residual``, and with ``relu`` it is clamped at 0, in the
        same pass; a saved ReLU keeps one bit per value for backward.
        ``y`` is ``out`` when given (checked by the caller: ``x``'s shape and
        dtype, writeable; any strides, ``x`` or ``residual`` itself
        included), else a new C-contiguous array.
        """

    def check_input_unchanged(self, saved: SavedForward) -> None:
        """ValueError when the forward's input was visibly modified since (where the device can tell cheaply)."""

    def backward(
        self, saved: SavedForward, grad_output: Array, weight_grad_dtype: Optional[np.dtype],
        combine_totals: Optional[Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = None,
    ) -> Gradients:
        """``grad_input``, and the weight's and bias's gradients in ``weight_grad_dtype`` (when given).

        After a forward with a fused ReLU, ``grad_output`` passes only where
        the forward's result was not <= 0; after one with a residual the
        gradients include the residual's (``grad_output`` as it passed).

        ``combine_totals`` (batch statistics only) joins a batch split over
        processes: it receives this share's float64 host ``(C,)`` totals
        ``sum(dy)`` and ``sum(dy * (x - mean))`` and returns the whole batch's. The
        input's gradient then uses the whole batch's totals (and ``saved.count``
        is the whole batch's count); the weight's and bias's are this share's.
        It is called on an empty share too.
        """

    def repeated_call(self, module: Any, x: Array, channel_axis: int, save: bool) -> Any:
        """After a plain forward of ``module`` on ``x`` succeeded: an object whose ``repeats(module, x,
        save)`` tells in O(1) whether a later forward is the same call again (and ``takes_out(out, x)``
        whether it can write to that call's ``out``), and then runs it (and its backward) in fewer steps
        with the same results; None where the device has no such shortcut.
        See ``numba_bn/cpu/small_calls.py``."""

    def mean_and_variance(self, statistics: BatchStatistics, dtype: np.dtype) -> tuple[Array, Array]:
        """The mean and the biased variance in ``dtype``, as ``batch_stats`` returns them."""


def check_device(device: Any) -> str:
    """A device name from :data:`DEVICES`, or a TypeError/ValueError."""
    if not isinstance(device, str):
        raise TypeError(f"expected device to be a str, got {describe_type(device)}")
    if device not in DEVICES:
        raise ValueError(f"expected device to be one of {list(DEVICES)}, got {device!r}")
    return device


def cuda_unavailable_reason() -> str | None:
    """Why CUDA kernels cannot run here, or None when they can (a usable GPU, or the simulator)."""
    try:
        from .cuda import numba_cuda
    except ImportError as error:  # the cuda extra is not installed
        return str(error)
    try:
        if numba_cuda.is_available():
            return None
    except Exception:  # missing CUDA bindings or driver: no CUDA, the CPU path still works
        pass
    return (
        "numba.cuda.is_available() is False (no NVIDIA GPU or driver; "
        "set NUMBA_ENABLE_CUDASIM=1 for the CUDA simulator)"
    )


def cuda_available() -> bool:
    """True when CUDA kernels can run: a usable GPU, or the CUDA simulator."""
    return cuda_unavailable_reason() is None


def require_cuda() -> None:
    if not cuda_available():
        reason = cuda_unavailable_reason() or "numba.cuda.is_available() is False"
        raise ValueError(f"expected a usable CUDA device for device='cuda', got none: {reason}")


def backend(device: str) -> Backend:
    """The backend of ``device`` (checked); ValueError for ``"cuda"`` without CUDA."""
    if check_device(device) == "cuda":
        require_cuda()
        from .cuda.backend import CUDA

        return CUDA
    return _cpu()


def backend_of(array: Any) -> Backend:
    """The backend that owns ``array``: CUDA for device arrays, else the CPU (which rejects non-arrays)."""
    return backend("cuda") if is_device_array(array) else _cpu()


@functools.lru_cache(maxsize=None)
def _cpu() -> Backend:
    from .cpu.backend import CPU

    return CPU
