"""What is benchmarked: operations, shapes, memory layouts and their input data.

A :class:`Case` names one measurement (an operation on one shape, layout and
dtype); :func:`make_case_data` builds its arrays. Shapes are always given in
PyTorch's logical order ``(N, C, ...)``; a channels-last case stores the same
values as ``(N, ..., C)``, the layout numba_bn reads with ``channel_axis=-1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

#: Training-mode forward (statistics, normalisation, running-buffer update),
#: evaluation-mode forward, and the backward of a training-mode forward: the
#: plain BatchNorm operations, which every implementation runs.
OPERATIONS: tuple[str, ...] = ("train_forward", "eval_forward", "train_backward")

#: BatchNorm fused with a residual add and a ReLU, ``y = relu(bn(x) + z)``, the
#: end of a ResNet basic block: the training forward, its backward (gradients of
#: x, z, weight and bias) and the evaluation forward into a preallocated output.
FUSED_OPERATIONS: tuple[str, ...] = ("train_forward_add_relu", "train_backward_add_relu", "eval_out_add_relu")
#: The plain evaluation forward into a preallocated output (``out=``).
EVAL_OUT = "eval_out"
#: Operations that only some implementations run (numba_bn, PyTorch and the roofline; not NumPy).
EXTRA_OPERATIONS: tuple[str, ...] = FUSED_OPERATIONS + (EVAL_OUT,)
ALL_OPERATIONS: tuple[str, ...] = OPERATIONS + EXTRA_OPERATIONS
#: Operations whose data has a residual ``z`` of the input's shape.
RESIDUAL_OPERATIONS: tuple[str, ...] = FUSED_OPERATIONS

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
LAYOUTS: tuple[str, ...] = (CHANNELS_FIRST, CHANNELS_LAST)

#: The shapes of the README's table: typical CNN activations, a wide MLP
#: batch, a sequence batch, a video batch, a tall-and-thin table and a tiny
#: batch (where fixed per-call costs dominate).
DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = (
    (32, 64, 56, 56),
    (64, 256, 14, 14),
    (8, 3, 224, 224),
    (4096, 1024),
    (32, 128, 1000),
    (4, 32, 16, 56, 56),
    (100000, 32),
    (64, 128),
)

#: The shapes of the fused rows: a ResNet's first and third stage activations.
FUSED_SHAPES: tuple[tuple[int, ...], ...] = ((32, 64, 56, 56), (64, 256, 14, 14))

#: A seconds-long subset for ``--quick``: one image shape, one matrix, the tiny one.
QUICK_SHAPES: tuple[tuple[int, ...], ...] = ((64, 256, 14, 14), (4096, 1024), (64, 128))

DTYPES: tuple[str, ...] = ("float32", "float64", "float16")

#: Training forward and backward need two or more values per channel.
_MIN_VALUES_PER_CHANNEL = 2


@dataclass(frozen=True)
class Case:
    """One measurement: ``operation`` on a ``shape`` (``(N, C, ...)``) stored in ``layout``."""

    operation: str
    shape: tuple[int, ...]
    layout: str = CHANNELS_FIRST
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.operation not in ALL_OPERATIONS:
            raise ValueError(f"expected operation in {list(ALL_OPERATIONS)}, got {self.operation!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"expected layout in {list(LAYOUTS)}, got {self.layout!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"expected dtype in {list(DTYPES)}, got {self.dtype!r}")
        check_shape(self.shape)
        if self.layout == CHANNELS_LAST and len(self.shape) < 3:
            raise ValueError(
                f"expected a shape with 3 or more dimensions for channels_last, got {self.shape} "
                "(an (N, C) batch is the same in both layouts)"
            )

    @property
    def channels(self) -> int:
        """Number of channels ``C``."""
        return self.shape[1]

    @property
    def channel_axis(self) -> int:
        """numba_bn's ``channel_axis`` for the stored array."""
        return -1 if self.layout == CHANNELS_LAST else 1

    @property
    def storage_shape(self) -> tuple[int, ...]:
        """Shape of the stored array: ``(N, ..., C)`` for channels-last."""
        if self.layout == CHANNELS_LAST:
            return (self.shape[0],) + self.shape[2:] + (self.shape[1],)
        return self.shape

    @property
    def nbytes(self) -> int:
        """Size of the input array in bytes."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def shape_text(self) -> str:
        """The logical shape as ``32x64x56x56``."""
        return format_shape(self.shape)

    @property
    def name(self) -> str:
        """A readable identifier, e.g. ``train_forward 32x64x56x56 channels_last float32``."""
        return f"{self.operation} {self.shape_text} {self.layout} {self.dtype}"


@dataclass(frozen=True)
class CaseData:
    """The arrays of a case, all NumPy, in the case's storage layout.

    ``residual`` is the ``z`` of ``relu(bn(x) + z)`` for the operations in
    :data:`RESIDUAL_OPERATIONS`, None for the others.
    """

    x: np.ndarray
    grad_output: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    residual: np.ndarray | None = None


def format_shape(shape: Sequence[int]) -> str:
    """``(32, 64, 56, 56)`` as ``32x64x56x56``."""
    return "x".join(str(n) for n in shape)


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A benchmarkable ``(N, C, ...)`` shape: 2 to 5 positive dimensions, 2+ values per channel."""
    shape = tuple(shape)
    if not 2 <= len(shape) <= 5 or not all(isinstance(n, (int, np.integer)) for n in shape):
        raise ValueError(f"expected a shape of 2 to 5 integer dimensions (N, C, ...), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"expected positive dimensions, got {format_shape(shape)}")
    if int(np.prod(shape)) // shape[1] < _MIN_VALUES_PER_CHANNEL:
        raise ValueError(
            f"expected at least {_MIN_VALUES_PER_CHANNEL} values per channel, got shape {format_shape(shape)}"
        )
    return tuple(int(n) for n in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse a shape written as dimensions joined by ``x``.

    Parameters
    ----------
    text : str
        For example ``"32x64x56x56"`` (case and surrounding spaces ignored).

    Returns
    -------
    tuple of int
        ``(32, 64, 56, 56)``.

    Raises
    ------
    ValueError
        When the text is malformed or the shape is not benchmarkable
        (see :func:`check_shape`); the message names what was given.
    """
    parts = text.strip().lower().split("x")
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"expected a shape like 32x64x56x56 (positive integers joined by 'x'), got {text!r}")
    return check_shape(tuple(int(part) for part in parts))


def parse_shapes(text: str) -> tuple[tuple[int, ...], ...]:
    """Parse a comma-separated list of shapes.

    Parameters
    ----------
    text : str
        For example ``"32x64x56x56,64x128"``.

    Returns
    -------
    tuple of tuple of int

    Raises
    ------
    ValueError
        When the list is empty or any shape is malformed.
    """
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected one or more shapes like 32x64x56x56,64x128, got {text!r}")
    return tuple(parse_shape(item) for item in items)


def build_cases(
    shapes: Iterable[Sequence[int]],
    operations: Iterable[str] = OPERATIONS,
    layouts: Iterable[str] = LAYOUTS,
    dtype: str = "float32",
) -> list[Case]:
    """Every combination of shape, layout and operation, in that nesting order.

    Parameters
    ----------
    shapes : iterable of sequences of int
        Shapes in ``(N, C, ...)`` order.
    operations : iterable of str
        A subset of :data:`ALL_OPERATIONS` (default: the plain :data:`OPERATIONS`).
    layouts : iterable of str
        A subset of :data:`LAYOUTS`; channels-last is left out for 2-D shapes,
        where it is the same as channels-first.
    dtype : str
        One of :data:`DTYPES`.

    Returns
    -------
    list of Case
    """
    operations, layouts = tuple(operations), tuple(layouts)
    cases = []
    for shape in shapes:
        for layout in layouts:
            if layout == CHANNELS_LAST and len(shape) < 3:
                continue
            for operation in operations:
                cases.append(Case(operation, tuple(shape), layout, dtype))
    return cases


def build_extra_cases(
    shapes: Iterable[Sequence[int]] = DEFAULT_SHAPES,
    fused_shapes: Iterable[Sequence[int]] = FUSED_SHAPES,
    dtype: str = "float32",
) -> list[Case]:
    """The cases of :data:`EXTRA_OPERATIONS`: the fused operations, then ``eval_out``.

    Parameters
    ----------
    shapes : iterable of sequences of int
        Shapes of the plain ``eval_out`` rows, in both layouts (as
        :func:`build_cases` lays them out).
    fused_shapes : iterable of sequences of int
        Shapes of the fused rows, channels-first only (the layout of
        PyTorch's ResNets).
    dtype : str
        One of :data:`DTYPES`.

    Returns
    -------
    list of Case
    """
    fused = build_cases(fused_shapes, FUSED_OPERATIONS, (CHANNELS_FIRST,), dtype)
    return fused + build_cases(shapes, (EVAL_OUT,), LAYOUTS, dtype)


def make_case_data(case: Case, seed: int = 0) -> CaseData:
    """Random input, gradient and per-channel parameters for ``case``.

    The input has a non-zero mean and non-unit spread per channel and the
    running buffers are not the identity, so every term of the formulas counts.

    Parameters
    ----------
    case : Case
        Gives the stored shape and the dtype.
    seed : int
        Seed of the random generator (the same seed gives the same arrays).

    Returns
    -------
    CaseData
        ``x``, ``grad_output`` and (for :data:`RESIDUAL_OPERATIONS`)
        ``residual`` in the case's dtype and storage layout; parameters and
        buffers in float32 for float16 data, else the data's dtype.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    # Parameters and buffers are float32 for float16 data (mixed precision).
    parameter_dtype = np.float32 if dtype == np.float16 else dtype
    channels = case.channels
    shape = case.storage_shape
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 2.0
    x += 0.5
    grad_output = rng.standard_normal(shape, dtype=np.float32)

    def vector(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, channels).astype(parameter_dtype)

    weight, bias = vector(0.5, 1.5), vector(-0.5, 0.5)
    running_mean, running_var = vector(-0.5, 0.5), vector(0.5, 2.0)
    residual = None
    if case.operation in RESIDUAL_OPERATIONS:
        # Drawn last, so the other arrays are those of the plain operations. About
        # half of bn(x) + z is negative, so the ReLU's mask matters.
        residual = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    return CaseData(
        x=x.astype(dtype, copy=False),
        grad_output=grad_output.astype(dtype, copy=False),
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
        residual=residual,
    )
