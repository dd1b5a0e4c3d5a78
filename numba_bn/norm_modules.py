"""``GroupNorm``, ``InstanceNorm1d/2d/3d`` and ``LayerNorm`` with PyTorch's semantics.

They normalise rows - (sample, group), (sample, channel) or each sample's
trailing ``normalized_shape`` values - with the rows' own statistics
(``numba_bn/_row_layout.py``), then apply a per-channel or per-element
affine. Like the BatchNorm modules they own NumPy or ``numba.cuda`` arrays,
have an explicit ``backward`` that overwrites ``grad_weight``/``grad_bias``,
``train``/``eval``, device moves, ``state_dict`` with PyTorch's keys, pickling
and ``no_grad``; those pieces are BatchNorm's own (``modules._BatchNorm``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from numpy.typing import DTypeLike

from . import row_norms
from ._backend import backend
from ._grad_mode import is_grad_enabled
from ._row_backend import row_backend
from ._row_layout import group_rows, layer_rows
from ._state import COUNTER_KEY, IncompatibleKeys, read_state
from ._typing import Array
from ._validation import (
    check_bool,
    check_channel_axis,
    check_like,
    check_module_dtype,
    check_num_features,
    check_parameter_dtype,
    check_real,
)
from .modules import _INPUT_OVERWRITTEN, _NOT_KEPT, _BatchNorm

_RUNNING_KEYS = ("running_mean", "running_var", COUNTER_KEY)


class _RowNorm:
    """What the three module kinds share; subclasses set the parameter shape and the forward."""

    dtype: np.dtype
    device: str
    affine: bool
    training: bool
    track_running_stats = False
    weight: Array | None
    bias: Array | None
    running_mean: Array | None = None
    running_var: Array | None = None
    num_batches_tracked: int | None = None
    grad_weight: Array | None
    grad_bias: Array | None

    _ARRAY_NAMES = _BatchNorm._ARRAY_NAMES
    #: Whether a forward that repeats the last one skips the general path's steps (GroupNorm, LayerNorm).
    _repeats_small_calls = True

    def _init_arrays(self, shape, affine, use_bias, dtype, device):
        self.dtype = check_parameter_dtype(dtype)
        self._backend = backend(device)
        self.device = device
        self._param_shape = shape
        self.affine = affine
        self._use_bias = use_bias and affine
        self.training = True
        new = self._backend.from_host
        self.weight = new(np.ones(shape), self.dtype) if affine else None
        self.bias = new(np.zeros(shape), self.dtype) if self._use_bias else None
        self.running_mean = self.running_var = self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self._saved = None
        self._repeated = None  # the last forward, while calls repeat it (GroupNorm and LayerNorm)

    @property
    def _rows(self):
        return row_backend(self.device)

    # Modes, moves, state and pickling work exactly as BatchNorm's.
    train = _BatchNorm.train
    eval = _BatchNorm.eval
    to = _BatchNorm.to
    cpu = _BatchNorm.cpu
    cuda = _BatchNorm.cuda
    _moved = _BatchNorm._moved
    _set_arrays = _BatchNorm._set_arrays
    _fill = _BatchNorm._fill
    state_dict = _BatchNorm.state_dict
    __getstate__ = _BatchNorm.__getstate__
    __setstate__ = _BatchNorm.__setstate__
    __repr__ = _BatchNorm.__repr__

    def __call__(self, x: Array) -> Array:
        """Normalise ``x``: the same as :meth:`forward`."""
        return self.forward(x)

    def forward(self, x: Array) -> Array:  # pragma: no cover - every subclass defines it
        raise TypeError(f"{type(self).__name__} is abstract")

    def _checked_input(self, x):
        return check_module_dtype("input", self._backend.as_array("input", x), self.dtype, type(self).__name__)

    def _check_parameters(self):
        """Parameters may have been reassigned by the user: re-check them."""
        for name in ("weight", "bias"):
            value = getattr(self, name)
            if value is not None:
                row_norms.check_param(self._backend, name, value, self._param_shape, dtype=self.dtype)

    def _forward_rows(self, x, checked_rows):
        """GroupNorm's and LayerNorm's forward: ``checked_rows(x)`` checks the module's input and gives its
        ``RowGeometry``. A call that repeats the last one (the same input layout, options and parameter
        objects) skips the checks and the set-up: see ``numba_bn/cpu/row_small_calls.py``."""
        save = is_grad_enabled()
        options = self._row_options()
        repeated = self._repeated
        if repeated is not None and repeated.repeats(self, x, options):
            y, saved = repeated.forward(x, save)
        else:
            x = self._checked_input(x)
            geometry = checked_rows(x)
            self._check_parameters()
            rows = self._rows
            y, _, saved = rows.forward_rows(x, geometry, self.weight, self.bias, self.eps, save=save)
            self._repeated = rows.repeated_rows(self, x, geometry, options) if self._repeats_small_calls else None
        self._keep(saved, x)
        return y

    def _keep(self, saved, x):
        """Remember the forward for backward (nothing inside ``no_grad``)."""
        self._saved = _NOT_KEPT if saved is None else (saved, x)

    def backward(self, grad_output: Array) -> Array:
        """Gradient of the loss w.r.t. the input of the most recent forward.

        Also sets ``grad_weight`` and ``grad_bias`` (overwritten, in the
        module's dtype and the parameters' shape) when the module is affine.
        The gradient flows through the rows' mean and variance as in PyTorch,
        except after a forward that used running statistics (constants).

        Parameters
        ----------
        grad_output : numpy.ndarray or DeviceArray
            The forward input's shape and dtype, on the module's device (any strides).

        Returns
        -------
        numpy.ndarray or DeviceArray
            ``grad_input``, a new C-contiguous array of the input's shape and dtype.

        Raises
        ------
        RuntimeError
            No forward recorded, or the last one ran inside :class:`numba_bn.no_grad`.
        TypeError, ValueError
            ``grad_output`` of another type, dtype or shape than the forward's input, or the
            forward's input was modified since (on the CPU, by a sampled check).
        """
        saved = self._saved
        if saved is None:
            raise RuntimeError("backward() needs a forward() first: no forward pass has been recorded")
        if saved is _NOT_KEPT:
            raise RuntimeError(
                "backward() needs a forward() that kept its input: the last forward ran inside numba_bn.no_grad()"
            )
        if saved is _INPUT_OVERWRITTEN:  # pragma: no cover - these modules never write over their input
            raise ValueError("expected a forward whose input is still there for backward()")
        saved, x = saved
        grad_output = check_like(
            "grad_output", self._backend.as_array("grad_output", grad_output), x, "the forward input's"
        )
        rows = self._rows
        rows.check_input_unchanged(saved)
        dy = grad_output.reshape(saved.source.shape) if tuple(x.shape) != tuple(saved.source.shape) else grad_output
        dx, sum_dy_xhat, sum_dy = rows.backward_rows(saved, dy, self.affine, self.dtype)
        if self.affine:
            self.grad_weight = sum_dy_xhat.reshape(self._param_shape)
            self.grad_bias = sum_dy.reshape(self._param_shape) if self._use_bias else None
        return dx.reshape(x.shape) if tuple(dx.shape) != tuple(x.shape) else dx

    def reset_parameters(self) -> None:
        """Running statistics reset (when tracked), ``weight`` to 1 and ``bias`` to 0, in place."""
        self.reset_running_stats()
        if self.weight is not None:
            self._fill("weight", 1)
        if self.bias is not None:
            self._fill("bias", 0)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, counter 0 (when tracked)."""
        if self.track_running_stats:
            self._fill("running_mean", 0)
            self._fill("running_var", 1)
            self.num_batches_tracked = 0

    def _state_keys(self):
        keys = []
        if self.affine:
            keys.append("weight")
        if self._use_bias:
            keys.append("bias")
        if self.track_running_stats:
            keys += list(_RUNNING_KEYS)
        return keys

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Load a ``state_dict()`` of this class or of the PyTorch module (NumPy arrays or tensors).

        Validated whole before anything is assigned: a call that raises changes nothing. See
        ``BatchNorm2d.load_state_dict`` for the rules.
        """
        strict = check_bool("strict", strict)
        values, incompatible = read_state(state, self._state_keys(), self._param_shape, strict)
        counter = values.pop(COUNTER_KEY, None)
        self._set_arrays(values)
        if counter is not None:
            self.num_batches_tracked = counter
        return incompatible

    def _extra_options(self):
        """This package's options, shown in ``repr`` when not the defaults."""
        text = ""
        if getattr(self, "channel_axis", 1) != 1:
            text += f", channel_axis={self.channel_axis}"
        if self.dtype != np.float32:
            text += f", dtype={self.dtype}"
        return text


_CLASS_OPTIONS = """
    dtype : numpy.float32 or numpy.float64, default numpy.float32
        Keyword-only. Dtype of the parameters, buffers and gradients, and of
        the input accepted (a float32 module also takes float16 input).
    device : {"cpu", "cuda"}, default "cpu"
        Keyword-only. Where the arrays live and the kernels run.
"""


class GroupNorm(_RowNorm):
    __doc__ = (
        """Group normalisation: each sample's channels in ``num_groups`` groups, each normalised on its own.

    Accepts ``(N, C, *)`` input, or ``(N, *, C)`` with ``channel_axis=-1``.
    The statistics of a group are the mean and biased variance of its
    ``C / num_groups`` channels over every spatial position of the sample;
    training and evaluation modes behave the same.

    Parameters
    ----------
    num_groups : int
        Groups of channels; must divide ``num_channels``.
    num_channels : int
        ``C``.
    eps : float, default 1e-5
        Added to the variance before its square root.
    affine : bool, default True
        Learn a per-channel ``weight`` (ones) and ``bias`` (zeros).
    bias : bool, default True
        Keyword-only. False keeps ``weight`` but no ``bias``.
    channel_axis : {1, -1}, default 1
        Keyword-only. Channels first (PyTorch's layout) or last.
"""
        + _CLASS_OPTIONS
        + """
    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> gn = nbn.GroupNorm(2, 4)
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 4, 5)).astype(np.float32)
    >>> y = gn(x)
    >>> bool(np.allclose(y.reshape(2, 2, -1).mean(axis=-1), 0, atol=1e-5))
    True
    >>> grad_x = gn.backward(np.ones_like(y))
    >>> gn
    GroupNorm(2, 4, eps=1e-05, affine=True, bias=True)
    """
    )

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        bias: bool = True,
        dtype: DTypeLike = np.float32,
        device: str = "cpu",
        channel_axis: int = 1,
    ) -> None:
        self.num_groups, self.num_channels = row_norms.check_groups(num_groups, num_channels)
        self.eps = check_real("eps", eps, minimum=0.0)
        self.channel_axis = check_channel_axis(channel_axis)
        self._init_arrays((self.num_channels,), check_bool("affine", affine), check_bool("bias", bias), dtype, device)

    def forward(self, x: Array) -> Array:
        """Normalise each group of ``x``: ``(N, C, *)`` (or channels-last) of the module's dtype."""
        return self._forward_rows(x, self._group_rows)

    def _group_rows(self, x):
        channels, axis = row_norms.group_channels(x, self.channel_axis)
        if channels != self.num_channels:
            raise ValueError(
                f"expected input with {self.num_channels} channels on axis {axis}, got {channels} "
                f"(input shape {tuple(x.shape)})"
            )
        return group_rows(tuple(x.shape), self.num_groups, self.channel_axis)

    def _row_options(self):
        return self.num_groups, self.num_channels, self.channel_axis, self.eps

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self._use_bias}"
            + self._extra_options()
        )


class _InstanceNorm(_RowNorm):
    """InstanceNorm1d/2d/3d; subclasses fix the input ranks (batched, and unbatched without N)."""

    _batched_rank = 3

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        bias: bool = True,
        dtype: DTypeLike = np.float32,
        device: str = "cpu",
        channel_axis: int = 1,
    ) -> None:
        self.num_features = check_num_features(num_features)
        self.eps = check_real("eps", eps, minimum=0.0)
        self.momentum = None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)
        self.track_running_stats = check_bool("track_running_stats", track_running_stats)
        self.channel_axis = check_channel_axis(channel_axis)
        self._init_arrays((self.num_features,), check_bool("affine", affine), check_bool("bias", bias), dtype, device)
        if self.track_running_stats:
            self.running_mean = self._backend.from_host(np.zeros(self.num_features), self.dtype)
            self.running_var = self._backend.from_host(np.ones(self.num_features), self.dtype)
            self.num_batches_tracked = 0

    def forward(self, x: Array) -> Array:
        """Normalise each (sample, channel) of ``x``; with ``track_running_stats`` a training forward
        also blends the instances' mean and unbiased variance, averaged over the batch, into the
        running buffers (``momentum=None`` leaves them as they are, as in PyTorch), and an evaluation
        forward normalises with them."""
        given = x = self._checked_input(x)
        rank = self._batched_rank
        if x.ndim not in (rank - 1, rank):
            raise ValueError(f"expected {rank - 1}D or {rank}D input (got {x.ndim}D input)")
        if x.ndim == rank - 1:  # unbatched: one sample
            x = x.reshape((1,) + tuple(x.shape))
        axis = 1 if self.channel_axis == 1 else x.ndim - 1
        channels = x.shape[axis]
        if channels != self.num_features:
            shown_axis = axis - (given.ndim != x.ndim)
            if self.affine or self.track_running_stats:
                raise ValueError(
                    f"expected input's size at dim={shown_axis} to match num_features ({self.num_features}), "
                    f"but got: {channels}."
                )
            row_norms.warn_channel_mismatch(shown_axis)
        self._check_parameters()
        use_input_stats = self.training or not self.track_running_stats
        updates = self.training and self.track_running_stats
        if self.track_running_stats:
            for name in ("running_mean", "running_var"):
                row_norms.check_param(
                    self._backend, name, getattr(self, name), self._param_shape, self.dtype, writeable=updates
                )
        running = None
        if use_input_stats:
            row_norms.check_spatial_size(x, axis)
        else:
            running = tuple(self._backend.to_host(v).astype(np.float64) for v in (self.running_mean, self.running_var))
        rows = self._rows
        y, statistics, saved = row_norms.instance_forward(
            rows, x, channels, self.weight, self.bias, self.eps, self.channel_axis, running, is_grad_enabled()
        )
        if updates and x.shape[0] > 0:
            factor = 0.0 if self.momentum is None else self.momentum
            current = tuple(self._backend.to_host(v).astype(np.float64) for v in (self.running_mean, self.running_var))
            mean, var = row_norms.instance_running_update(
                rows, statistics, x.shape[0], channels, row_norms.spatial_size(x, axis), *current, factor
            )
            self._set_arrays({"running_mean": mean, "running_var": var})
        self._keep(saved, given)
        return y.reshape(given.shape) if given.ndim != x.ndim else y

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """As PyTorch's InstanceNorm: running statistics in ``state`` for a module that does not track
        them are ignored with a warning (checkpoints of either configuration load)."""
        if not self.track_running_stats and isinstance(state, Mapping):
            extra = [key for key in _RUNNING_KEYS if key in state]
            if extra:
                import warnings

                warnings.warn(
                    f"Unexpected running stats buffer(s) {extra} for {type(self).__name__} with "
                    "track_running_stats=False. If state_dict is a checkpoint saved before 0.4.0, this may be "
                    "expected because InstanceNorm's running stats were not tracked then; they are ignored.",
                    UserWarning,
                    stacklevel=2,
                )
                state = {key: value for key, value in state.items() if key not in extra}
        return super().load_state_dict(state, strict)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self._use_bias}, track_running_stats={self.track_running_stats}" + self._extra_options()
        )


_INSTANCE_DOC = """
    Each (sample, channel) is normalised with its own mean and biased
    variance. With ``track_running_stats=True`` a training forward also
    updates ``running_mean``/``running_var`` (the batch average of the
    instances' mean and unbiased variance, blended with ``momentum``;
    ``momentum=None`` leaves them unchanged, as in PyTorch), and an evaluation
    forward normalises with them. ``num_batches_tracked`` exists for
    PyTorch's state dict and stays 0, as in PyTorch.

    Parameters
    ----------
    num_features : int
        ``C``.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default False
        Learn a per-channel ``weight`` and ``bias``.
    track_running_stats : bool, default False
    bias : bool, default True
        Keyword-only. With ``affine=True``, False keeps ``weight`` but no ``bias``.
    channel_axis : {1, -1}, default 1
        Keyword-only. Channels first (PyTorch's layout) or last.
""" + _CLASS_OPTIONS


class InstanceNorm1d(_InstanceNorm):
    __doc__ = (
        """Instance normalisation of sequences: ``(N, C, L)`` or unbatched ``(C, L)``
    (``(N, L, C)``/``(L, C)`` with ``channel_axis=-1``).
    """
        + _INSTANCE_DOC
    )
    _batched_rank = 3


class InstanceNorm2d(_InstanceNorm):
    __doc__ = (
        """Instance normalisation of images: ``(N, C, H, W)`` or unbatched ``(C, H, W)``
    (channels last with ``channel_axis=-1``).

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> norm = nbn.InstanceNorm2d(3, affine=True)
    >>> y = norm(np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32))
    >>> norm
    InstanceNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=False)
    """
        + _INSTANCE_DOC
    )
    _batched_rank = 4


class InstanceNorm3d(_InstanceNorm):
    __doc__ = (
        """Instance normalisation of volumes: ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)``
    (channels last with ``channel_axis=-1``).
    """
        + _INSTANCE_DOC
    )
    _batched_rank = 5


class LayerNorm(_RowNorm):
    """Layer normalisation: each sample's trailing ``normalized_shape`` values normalised together.

    Accepts ``(*, *normalized_shape)`` input. ``weight`` and ``bias`` have the
    shape ``normalized_shape`` (one per normalised value); training and
    evaluation modes behave the same.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing shape normalised over.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learn ``weight`` (ones) and ``bias`` (zeros) of ``normalized_shape``.
    bias : bool, default True
        False keeps ``weight`` but no ``bias``.
""" + _CLASS_OPTIONS + """
    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> ln = nbn.LayerNorm(8)
    >>> y = ln(np.random.default_rng(0).normal(size=(4, 3, 8)).astype(np.float32))
    >>> bool(np.allclose(y.mean(axis=-1), 0, atol=1e-5))
    True
    >>> ln
    LayerNorm((8,), eps=1e-05, elementwise_affine=True, bias=True)
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        device: str = "cpu",
    ) -> None:
        self.normalized_shape = row_norms.check_normalized_shape(normalized_shape)
        self.eps = check_real("eps", eps, minimum=0.0)
        self.elementwise_affine = check_bool("elementwise_affine", elementwise_affine)
        self._init_arrays(self.normalized_shape, self.elementwise_affine, check_bool("bias", bias), dtype, device)

    def forward(self, x: Array) -> Array:
        """Normalise the trailing ``normalized_shape`` values of each sample of ``x``."""
        return self._forward_rows(x, self._layer_rows)

    def _layer_rows(self, x):
        row_norms.check_layer_input(x, self.normalized_shape)
        return layer_rows(tuple(x.shape), len(self.normalized_shape))

    def _row_options(self):
        return self.normalized_shape, self.eps

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self._use_bias}" + self._extra_options()
        )
