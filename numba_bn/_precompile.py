"""``precompile``: compile the CPU kernels ahead of their first use.

Numba compiles each kernel on its first call with new argument types and
caches the machine code on disk (``NUMBA_CACHE_DIR``, or ``__pycache__``
next to the package). A first training step on a fresh machine therefore
takes seconds; ``precompile`` pays that once, for every combination a
program is likely to meet, so that later processes load the kernels from the
cache. It runs each module operation (training and evaluation forwards,
their backward passes, with and without affine parameters) on small inputs,
once below and once above ``config.SERIAL_BELOW`` values, so that both the
serial and the thread-pool drivers of every kernel are compiled; with
``fused=True`` also the fused ReLU and residual passes (``activation="relu"``),
and with ``family=True`` the kernels of GroupNorm, InstanceNorm and LayerNorm.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import numpy as np

from . import config

#: The dtypes, layouts and ranks ``precompile`` covers by default.
DTYPES = ("float32", "float64", "float16")
LAYOUTS = ("channels_first", "channels_last")
RANKS = (2, 3, 4, 5)

_CHANNEL_AXES = {"channels_first": 1, "channels_last": -1}
_CHANNELS = 3


def _dtype_name(value):
    """``"float32"`` for ``"float32"``, ``np.float32`` or ``np.dtype("float32")``; other values as given."""
    try:
        return str(np.dtype(value))
    except TypeError:
        return value


def _checked_choices(name, values, allowed):
    if isinstance(values, (str, int)):
        values = (values,)
    values = tuple(values)
    unknown = [value for value in values if value not in allowed]
    if not values or unknown:
        raise ValueError(f"expected {name} from {list(allowed)}, got {list(values)}")
    return values


def _module_class(rank):
    from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

    return {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}[rank]


def _shape(rank, channel_axis, channels, values):
    """A shape of ``rank`` with ``channels`` on ``channel_axis`` and at least ``values`` values."""
    shape = [2] * rank
    shape[channel_axis] = channels
    per_batch = channels * 2 ** (rank - 2)
    shape[0] = max(2, -(-values // per_batch))
    return tuple(shape)


def _exercise_family(x, channels, channel_axis, module_dtype):
    """GroupNorm, InstanceNorm (with running statistics) and LayerNorm: forward and backward,
    training and evaluation, on ``x``."""
    from . import norm_modules

    modules = [
        norm_modules.GroupNorm(1, channels, dtype=module_dtype, channel_axis=channel_axis),
        norm_modules.LayerNorm(x.shape[-1], dtype=module_dtype),
    ]
    if x.ndim >= 3:
        instance_norm = getattr(norm_modules, f"InstanceNorm{x.ndim - 2}d")
        modules.append(instance_norm(channels, affine=True, track_running_stats=True, dtype=module_dtype,
                                     channel_axis=channel_axis))
    for module in modules:
        for training in (True, False):
            module.train(training)
            module.backward(module(x))


def _exercise(dtype, layout, rank, fused, family):
    """Every module operation, serial and parallel, for one dtype, layout and rank."""
    channel_axis = _CHANNEL_AXES[layout]
    module_dtype = np.float32 if dtype == np.float16 else dtype
    rng = np.random.default_rng(0)
    # The serial drivers, then the thread pool's, with enough channels for the backward a channel at a time.
    large = max(config.SERIAL_BELOW, config.BACKWARD_BY_CHANNEL * config.BACKWARD_BY_CHANNEL_VALUES)
    for channels, values in ((_CHANNELS, 2 * _CHANNELS), (config.BACKWARD_BY_CHANNEL, large)):
        x = rng.standard_normal(_shape(rank, channel_axis, channels, values)).astype(dtype)
        for affine in (True, False):
            bn = _module_class(rank)(channels, affine=affine, dtype=module_dtype, channel_axis=channel_axis)
            for training in (True, False):
                bn.train(training)
                for _ in range(2):  # the second call repeats the first: small ones run in one compiled step
                    bn.backward(bn(x))
        if fused:
            bn = _module_class(rank)(channels, dtype=module_dtype, channel_axis=channel_axis, activation="relu")
            for training in (True, False):
                bn.train(training)
                bn.backward(bn(x))
                bn.backward(bn(x, x))  # BN + add + ReLU
        if family:
            _exercise_family(x, channels, channel_axis, module_dtype)


def precompile(
    dtypes: str | Sequence[str] = DTYPES,
    layouts: str | Sequence[str] = LAYOUTS,
    ranks: int | Sequence[int] = RANKS,
    *,
    fused: bool = False,
    family: bool = False,
    progress: bool | Callable[[int, int, str], None] = False,
) -> dict[str, float]:
    """Compile the CPU kernels for the given dtypes, layouts and ranks ahead of their first use.

    The compiled code goes to Numba's on-disk cache, so every later process
    on this machine (with the same ``NUMBA_CACHE_DIR``) starts with fast
    first calls. Takes seconds per dtype and layout on a cold cache, and a
    fraction of a second when the kernels are already cached. Run it once
    after installing, e.g. ``python -m numba_bn precompile``; it does not
    change any module's state and needs no GPU (the CUDA kernels compile for
    the GPU they meet, on first use).

    Parameters
    ----------
    dtypes : str or dtype, or a sequence of them, default ("float32", "float64", "float16")
        Input dtypes: float16 input runs through float32 modules.
    layouts : str or sequence of str, default ("channels_first", "channels_last")
        ``channel_axis=1`` and ``channel_axis=-1`` inputs.
    ranks : int or sequence of int, default (2, 3, 4, 5)
        Input ranks (``BatchNorm1d`` takes 2 and 3, ``BatchNorm2d`` 4,
        ``BatchNorm3d`` 5). The kernels are the same for every rank; the
        ranks decide which input shapes are exercised.
    fused : bool, default False
        Also compile the fused passes of ``activation="relu"`` modules
        (BN + ReLU and BN + add + ReLU, forward and backward): as many
        seconds again per dtype and layout, for programs that use them.
    family : bool, default False
        Also compile the kernels of ``GroupNorm``, ``InstanceNorm1d/2d/3d``
        and ``LayerNorm`` (and of their functions).
    progress : bool or callable, default False
        True draws a progress bar on stderr; a callable is called as
        ``progress(done, total, label)`` before each step and at the end.

    Returns
    -------
    dict of str to float
        Seconds spent per ``"dtype layout rank"`` combination, in order.

    Raises
    ------
    ValueError
        An unknown dtype, layout or rank, or an empty selection.

    Examples
    --------
    >>> import numba_bn as nbn
    >>> seconds = nbn.precompile(dtypes="float32", layouts="channels_first", ranks=4)
    >>> list(seconds)
    ['float32 channels_first 4D']
    """
    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = (dtypes,)
    dtypes = _checked_choices("dtypes", tuple(map(_dtype_name, dtypes)), DTYPES)
    layouts = _checked_choices("layouts", layouts, LAYOUTS)
    ranks = _checked_choices("ranks", ranks, RANKS)
    combinations = list(itertools.product(dtypes, layouts, ranks))
    report = _progress_reporter(progress, len(combinations))
    from .cpu import compile_notice

    seconds = {}
    with compile_notice.suppressed():
        for done, (dtype, layout, rank) in enumerate(combinations):
            label = f"{dtype} {layout} {rank}D"
            report(done, label)
            start = time.perf_counter()
            _exercise(np.dtype(dtype), layout, rank, fused, family)
            seconds[label] = time.perf_counter() - start
    report(len(combinations), "done")
    return seconds


def _progress_reporter(progress, total):
    """``report(done, label)`` for the ``progress`` argument."""
    if progress is True:
        from .bench.progress import ProgressBar

        bar = ProgressBar(total)

        def report(done, label):
            if done == total:
                bar.finish(label)
            else:
                bar.update(f"compiling {label}", advance=done - bar.done)

        return report
    if progress is False or progress is None:
        return lambda done, label: None
    if not callable(progress):
        raise TypeError(f"expected progress to be a bool or a callable, got {type(progress).__name__}")
    return lambda done, label: progress(done, total, label)
