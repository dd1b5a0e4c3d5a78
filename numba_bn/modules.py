"""``BatchNorm1d``, ``BatchNorm2d`` and ``BatchNorm3d`` with PyTorch's semantics.

The three classes share one implementation and differ only in the input ranks
they accept. Each module owns its parameters (``weight``, ``bias``) and
running buffers (``running_mean``, ``running_var``, ``num_batches_tracked``)
as NumPy arrays on ``device="cpu"`` or ``numba.cuda`` device arrays on
``device="cuda"``. There is no autograd: ``backward(grad_output)`` returns the
input's gradient for the most recent ``forward`` and stores the parameters'
gradients in ``grad_weight`` and ``grad_bias``.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

import numpy as np
from numpy.typing import DTypeLike

from ._backend import RunningStatistics, RunningUpdate, SavedForward, backend
from ._grad_mode import is_grad_enabled
from ._stats import ChannelStats
from ._state import COUNTER_KEY, IncompatibleKeys, read_state
from ._typing import Array
from ._validation import (
    check_activation,
    check_bool,
    check_channel_axis,
    check_channels,
    check_like,
    check_output,
    check_module_dtype,
    check_num_features,
    check_parameter_dtype,
    check_real,
    check_values_per_channel,
    describe_type,
)

#: ``_saved`` after a forward inside ``no_grad``: nothing kept, so no backward.
_NOT_KEPT = "not kept"
#: ``_saved`` after a forward that wrote its output over its input (``out=x``): no backward.
_INPUT_OVERWRITTEN = "input overwritten"

#: The concrete module class, so that ``train``/``to``/... are typed as returning it.
_Module = TypeVar("_Module", bound="_BatchNorm")


class _BatchNorm:
    """Shared implementation; subclasses fix the accepted input ranks."""

    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    dtype: np.dtype
    device: str
    channel_axis: int
    activation: str | None
    training: bool
    weight: Array | None
    bias: Array | None
    running_mean: Array | None
    running_var: Array | None
    num_batches_tracked: int | None
    grad_weight: Array | None
    grad_bias: Array | None

    _input_ranks: tuple[int, ...] = ()
    _rank_description = ""
    #: Whether a repeated small call may run in one compiled call (see ``numba_bn/cpu/small_calls.py``);
    #: not where the statistics come from elsewhere too (SyncBatchNorm).
    _repeats_small_calls = True
    _ARRAY_NAMES = ("weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        dtype: DTypeLike = np.float32,
        device: str = "cpu",
        channel_axis: int = 1,
        activation: str | None = None,
    ) -> None:
        self.num_features = check_num_features(num_features)
        self.eps = check_real("eps", eps, minimum=0.0)
        self.momentum = None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)
        self.affine = check_bool("affine", affine)
        self.track_running_stats = check_bool("track_running_stats", track_running_stats)
        self._use_bias = check_bool("bias", bias) and self.affine
        self.dtype = check_parameter_dtype(dtype)
        self._backend = backend(device)
        self.device = device
        self.channel_axis = check_channel_axis(channel_axis)
        self.activation = check_activation(activation)
        self.training = True

        new = self._backend.from_host
        channels = self.num_features
        self.weight = new(np.ones(channels), self.dtype) if self.affine else None
        self.bias = new(np.zeros(channels), self.dtype) if self._use_bias else None
        if self.track_running_stats:
            self.running_mean = new(np.zeros(channels), self.dtype)
            self.running_var = new(np.ones(channels), self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self._saved = None
        self._repeated = None  # the last small call, while calls repeat it

    # ------------------------------------------------------------ forward

    def __call__(self, x: Array, residual: Array | None = None, *, out: Array | None = None) -> Array:
        """Normalise ``x``: the same as :meth:`forward`.

        Parameters
        ----------
        x : numpy.ndarray or DeviceArray
            The input batch; see :meth:`forward`.
        residual : numpy.ndarray or DeviceArray or None, default None
            Added to the normalised batch before the activation; see :meth:`forward`.
        out : numpy.ndarray or DeviceArray or None, default None
            Keyword-only. Where to write the result; see :meth:`forward`.

        Returns
        -------
        numpy.ndarray or DeviceArray
            The normalised batch; see :meth:`forward`.
        """
        return self.forward(x, residual, out=out)

    def forward(self, x: Array, residual: Array | None = None, *, out: Array | None = None) -> Array:
        """Normalise ``x``; in training mode also update the running buffers.

        In training mode, or whenever ``track_running_stats=False``, ``x`` is
        normalised with its own per-channel mean and biased variance. In
        training mode with ``track_running_stats=True`` the module then adds 1
        to ``num_batches_tracked`` and blends the batch's mean and **unbiased**
        variance into ``running_mean`` and ``running_var`` in place, with
        factor ``momentum`` (``1 / num_batches_tracked`` when ``momentum`` is
        None). In evaluation mode with tracked statistics the running buffers
        normalise ``x`` and nothing is updated. Then ``weight`` scales and
        ``bias`` shifts each channel, when they exist. Then ``residual`` is
        added and the module's ``activation`` applied, in the same pass over
        memory: the result is ``activation(batchnorm(x) + residual)``. The
        input is kept by reference for :meth:`backward` (and, with a ReLU, one
        bit per value: where the result is not <= 0), except inside
        :class:`numba_bn.no_grad` (inference), where nothing is kept.

        Parameters
        ----------
        x : numpy.ndarray or DeviceArray
            The batch, of a rank this class accepts, with ``num_features``
            channels on ``channel_axis``; any strides and byte order. Its
            dtype must be the module's ``dtype`` (float16 is also accepted by
            a float32 module). On ``device="cpu"`` a NumPy array, on
            ``device="cuda"`` a ``numba.cuda`` device array or any object
            with ``__cuda_array_interface__`` (read without a copy).
        residual : numpy.ndarray or DeviceArray or None, default None
            Added to the normalised batch before the activation (a ResNet
            block's shortcut): ``x``'s shape and dtype, on the module's
            device, any strides and byte order. :meth:`backward` then also
            returns its gradient.
        out : numpy.ndarray or DeviceArray or None, default None
            Keyword-only. A writeable array of ``x``'s shape and dtype, on
            the module's device, any strides (``x`` or ``residual`` itself
            too), that receives the result instead of a new array. After a
            forward that wrote over its own input, :meth:`backward` raises.

        Returns
        -------
        numpy.ndarray or DeviceArray
            ``out`` when given, else a new C-contiguous array of ``x``'s
            shape and dtype (in native byte order): a NumPy array on the
            CPU, a ``numba.cuda`` device array on the GPU.

        Raises
        ------
        TypeError
            ``x`` or ``residual`` is not an array of the module's device (e.g.
            a list, or a device array given to a CPU module), or has another
            dtype.
        ValueError
            ``residual`` has another shape than ``x``; ``x`` has the wrong
            rank or channel count, or a single value per
            channel while batch statistics are needed (PyTorch's check);
            or a parameter or buffer reassigned by the user has the wrong
            shape or is read-only while it must be updated. The matching
            ``TypeError`` is raised for a reassigned array of the wrong type
            or dtype. A call that raises changes no parameter, buffer or counter.

        Notes
        -----
        Unlike PyTorch there is no type promotion: convert ``x`` with
        ``x.astype(...)`` or build the module with the input's ``dtype``.
        The statistics are accumulated in float64 whatever the dtype.
        """
        save = is_grad_enabled()
        repeated = self._repeated
        if (
            repeated is not None and residual is None and repeated.repeats(self, x, save)
            and (out is None or repeated.takes_out(out, x))
        ):
            return self._repeat_forward(repeated, x, save, out)
        backend = self._backend
        x, axis, statistics, out, residual = self._normalizing_statistics(x, out, residual)
        overwrites_input = out is not None and backend.shares_memory(out, x)  # then no backward can read it
        running = None
        if self.training and self.track_running_stats:
            count = self.num_batches_tracked + 1  # type: ignore[operator]  # an int while tracking
            factor = 1.0 / count if self.momentum is None else self.momentum
            running = RunningUpdate(self.running_mean, self.running_var, factor)
        y, saved = backend.forward(
            x, axis, statistics, self.weight, self.bias, self.eps, save=save and not overwrites_input, out=out,
            residual=residual, relu=self.activation == "relu", running=running,
        )
        if running is not None:
            self.num_batches_tracked = count
        # State changes only once every step has succeeded.
        if not save:
            self._saved = _NOT_KEPT
        else:
            self._saved = _INPUT_OVERWRITTEN if overwrites_input else saved
        self._repeated = None
        if self._repeats_small_calls and residual is None:
            self._repeated = backend.repeated_call(self, x, axis, save)
        return y

    def _repeat_forward(self, repeated, x, save, out):
        """``forward(x, out=out)`` in the repeated call's one compiled step: the same results and state changes."""
        updates = self.training and self.track_running_stats
        count = self.num_batches_tracked + 1 if updates else 0  # type: ignore[operator]  # an int while tracking
        factor = (1.0 / count if self.momentum is None else self.momentum) if updates else 0.0
        overwrites_input = out is x  # then no backward can read it
        y, saved = repeated.forward(self, x, updates, float(factor), out, keep=not overwrites_input)
        if updates:
            self.num_batches_tracked = count
        if not save:
            self._saved = _NOT_KEPT
        else:
            self._saved = _INPUT_OVERWRITTEN if overwrites_input else saved
        return y

    def _checked_forward_input(self, x, out, residual):
        """``(x, axis, out, residual)``: the input checked (as the backend reads it), its channel axis,
        the checked ``out`` and ``residual`` (or None), with the parameters and buffers re-checked, or
        an exception."""
        x = self._check_input(x)
        if residual is not None:
            residual = check_like("residual", self._backend.as_array("residual", residual), x, "the input's")
        if out is not None:
            out = check_output(self._backend.as_array("out", out), x)
        self._check_state(writeable_buffers=self.training and self.track_running_stats)
        return x, self.channel_axis % x.ndim, out, residual

    def _normalizing_statistics(self, x, out, residual):
        """``(x, axis, statistics, out, residual)``: the checked input, what normalises it (batch or
        running statistics), the checked ``out`` and ``residual``."""
        x, axis, out, residual = self._checked_forward_input(x, out, residual)
        if self.training or not self.track_running_stats:
            check_values_per_channel(x, axis)
            return x, axis, self._backend.batch_statistics(x, axis, merge=False), out, residual
        return x, axis, RunningStatistics(self.running_mean, self.running_var), out, residual

    def backward(self, grad_output: Array) -> Array | tuple[Array, Array]:
        """Gradient of the loss w.r.t. the input of the most recent forward (and its residual).

        Also sets ``grad_weight`` and ``grad_bias`` (overwriting them, not
        accumulating) when the module is affine; ``grad_bias`` stays None
        with ``bias=False``. After a forward that normalised with batch
        statistics, the gradient flows through the batch's mean and variance
        as in PyTorch; after an eval-mode forward that used the running
        statistics they are treated as constants. The parameters used are
        those of the forward (its ``weight`` is remembered), and backward may
        be called again for another ``grad_output``. Through a ReLU the
        gradient is 0 where ``batchnorm(x) + residual`` was 0 or negative,
        as in PyTorch (whose ReLU also lets it through where that is NaN).

        Parameters
        ----------
        grad_output : numpy.ndarray or DeviceArray
            Gradient of the loss w.r.t. the forward's output: the forward
            input's shape and dtype, on the module's device (any strides).

        Returns
        -------
        numpy.ndarray or DeviceArray, or a tuple of two
            ``grad_input``, a new C-contiguous array of the forward input's
            shape and dtype, on the module's device; after a forward with a
            ``residual``, the tuple ``(grad_input, grad_residual)``, both so.

        Raises
        ------
        RuntimeError
            No forward has been recorded (none yet, or the module was moved
            with :meth:`to` since), or the last one ran inside
            :class:`numba_bn.no_grad`.
        TypeError
            ``grad_output`` is not an array of the module's device, or its
            dtype differs from the forward input's.
        ValueError
            ``grad_output``'s shape differs from the forward input's; or, on
            the CPU, the forward's input was modified in place since the
            forward (checked on a fixed sample of its elements).

        Notes
        -----
        The forward's input is read again here, by reference, instead of
        keeping a copy: do not modify it between forward and backward.
        ``grad_weight`` and ``grad_bias`` have the module's ``dtype``.
        """
        repeated, saved = self._repeated, self._saved
        if repeated is not None and type(saved) is SavedForward and repeated.takes_backward(saved, grad_output):
            grad_input, sums = repeated.backward(saved, grad_output)
            if self.affine:
                self.grad_weight, grad_bias = sums.astype(self.dtype)
                self.grad_bias = grad_bias if self._use_bias else None
            return grad_input
        saved, grad_output = self._checked_backward_input(grad_output)
        return self._store_gradients(self._backend.backward(saved, grad_output, self._weight_grad_dtype()))

    def _checked_backward_input(self, grad_output):
        """``(saved, grad_output)``: the recorded forward and ``grad_output`` checked against it, or an exception."""
        saved = self._saved
        if saved is None:
            raise RuntimeError("backward() needs a forward() first: no forward pass has been recorded")
        if saved is _NOT_KEPT:
            raise RuntimeError(
                "backward() needs a forward() that kept its input: the last forward ran inside numba_bn.no_grad()"
            )
        if saved is _INPUT_OVERWRITTEN:
            raise ValueError(
                "expected a forward whose input is still there for backward(), got one that wrote its output "
                "over its input (out=x): run the forward without out=x before a backward"
            )
        grad_output = check_like(
            "grad_output", self._backend.as_array("grad_output", grad_output), saved.x, "the forward input's"
        )
        self._backend.check_input_unchanged(saved)
        return saved, grad_output

    def _weight_grad_dtype(self):
        return self.dtype if self.affine else None

    def _store_gradients(self, grads):
        """Keep the parameters' gradients; returns ``grad_input`` (and ``grad_residual`` when there is one)."""
        if self.affine:
            self.grad_weight = grads.grad_weight
            self.grad_bias = grads.grad_bias if self._use_bias else None
        if grads.grad_residual is not None:
            return grads.grad_input, grads.grad_residual
        return grads.grad_input

    def _check_input(self, x):
        """``x`` checked (and, on the GPU, as a device array) or an exception."""
        x = check_module_dtype("input", self._backend.as_array("input", x), self.dtype, type(self).__name__)
        if x.ndim not in self._input_ranks:
            raise ValueError(f"expected {self._rank_description} input (got {x.ndim}D input)")
        check_channels(x, self.channel_axis, self.num_features)
        return x

    def _check_state(self, writeable_buffers):
        """Parameters and buffers may have been reassigned by the user: re-check them."""
        channels = self.num_features
        check_vector = self._backend.check_vector
        for name in ("weight", "bias"):
            value = getattr(self, name)
            if value is not None:
                check_vector(name, value, channels, dtype=self.dtype)
        if self.track_running_stats:
            for name in ("running_mean", "running_var"):
                check_vector(
                    name, getattr(self, name), channels, dtype=self.dtype, writeable=writeable_buffers
                )

    # ------------------------------------------------------------- modes

    def train(self: _Module, mode: bool = True) -> _Module:
        """Set training mode (``mode=True``) or evaluation mode.

        Parameters
        ----------
        mode : bool, default True
            True for training mode (normalise with batch statistics and update
            the running buffers), False for evaluation mode.

        Returns
        -------
        BatchNorm1d, BatchNorm2d or BatchNorm3d
            ``self``, so that calls chain: ``bn.train()(x)``.

        Raises
        ------
        ValueError
            ``mode`` is not a bool (PyTorch's exception type and message).
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"training mode is expected to be boolean, got {describe_type(mode)}")
        self.training = bool(mode)
        return self

    def eval(self: _Module) -> _Module:
        """Set evaluation mode: the same as ``train(False)``.

        Returns
        -------
        BatchNorm1d, BatchNorm2d or BatchNorm3d
            ``self``.
        """
        return self.train(False)

    def to(self: _Module, device: str) -> _Module:
        """Move parameters, buffers and gradients to ``device``, in place.

        On ``"cuda"`` they become ``numba.cuda`` device arrays, on ``"cpu"``
        NumPy arrays (copies), and ``self.device`` changes. A move forgets the
        recorded forward (its input lives on the old device): call forward
        again before backward. Moving to the current device does nothing.

        Parameters
        ----------
        device : {"cpu", "cuda"}
            The target device.

        Returns
        -------
        BatchNorm1d, BatchNorm2d or BatchNorm3d
            ``self``.

        Raises
        ------
        TypeError
            ``device`` is not a str.
        ValueError
            ``device`` is neither ``"cpu"`` nor ``"cuda"``, or it is
            ``"cuda"`` and no usable CUDA device (or simulator) is found.

        Notes
        -----
        Unlike PyTorch's ``Module.to``, only a device is accepted (no dtype,
        no ``torch.device``); there is one module dtype, fixed at construction.
        """
        target = backend(device)
        if device == self.device:
            return self
        moved = {name: self._moved(getattr(self, name), target) for name in self._ARRAY_NAMES}
        for name, value in moved.items():
            setattr(self, name, value)
        self._backend = target
        self.device = device
        self._saved = self._repeated = None
        return self

    def _moved(self, array, target):
        """``array`` (or None) copied from this module's device to ``target``'s."""
        if array is None:
            return None
        return target.from_host(self._backend.to_host(array), array.dtype)

    def cpu(self: _Module) -> _Module:
        """Move parameters, buffers and gradients to the host: ``to("cpu")``.

        Returns
        -------
        BatchNorm1d, BatchNorm2d or BatchNorm3d
            ``self``.
        """
        return self.to("cpu")

    def cuda(self: _Module) -> _Module:
        """Move parameters, buffers and gradients to the GPU: ``to("cuda")``.

        Returns
        -------
        BatchNorm1d, BatchNorm2d or BatchNorm3d
            ``self``.

        Raises
        ------
        ValueError
            No usable CUDA device (or simulator) is found.
        """
        return self.to("cuda")

    # ------------------------------------------------------------- state

    def reset_running_stats(self) -> None:
        """Set the running mean to 0, the running variance to 1 and the batch counter to 0.

        The arrays are filled in place (views of them see the change); nothing
        happens when the module does not track running statistics.
        """
        if self.track_running_stats:
            self._fill("running_mean", 0)
            self._fill("running_var", 1)
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """Reset the running statistics (see :meth:`reset_running_stats`), ``weight`` to 1 and ``bias`` to 0.

        All in place; parameters that do not exist are skipped. The gradients
        are left as they are.
        """
        self.reset_running_stats()
        if self.weight is not None:
            self._fill("weight", 1)
        if self.bias is not None:
            self._fill("bias", 0)

    def set_running_stats(self, stats: ChannelStats) -> None:
        """Set the running buffers to exact population statistics (PreciseBN).

        ``running_mean`` becomes ``stats.mean`` and ``running_var``
        ``stats.unbiased_var``, in the module's dtype and on its device
        (copied into the existing arrays when they can take them);
        ``num_batches_tracked`` is left as it is. Typically ``stats`` merges
        :func:`numba_bn.channel_stats` of many training batches, which gives
        the statistics of all their values together, not an average of
        per-batch variances.

        Parameters
        ----------
        stats : ChannelStats
            Statistics of ``num_features`` channels over 2 or more values per channel.

        Raises
        ------
        TypeError
            ``stats`` is not a ``ChannelStats``.
        ValueError
            The module does not track running statistics, the channel
            counts differ, or ``stats`` holds fewer than 2 values per
            channel (no unbiased variance). Nothing is changed then.

        Examples
        --------
        >>> import numpy as np
        >>> import numba_bn as nbn
        >>> batches = [np.random.default_rng(i).normal(size=(16, 4)) for i in range(3)]
        >>> bn = nbn.BatchNorm1d(4, dtype=np.float64)
        >>> bn.set_running_stats(nbn.ChannelStats.merge_all(nbn.channel_stats(b) for b in batches))
        >>> bool(np.allclose(bn.running_var, np.concatenate(batches).var(axis=0, ddof=1)))
        True
        """
        if not isinstance(stats, ChannelStats):
            raise TypeError(f"expected stats to be a ChannelStats, got {describe_type(stats)}")
        if not self.track_running_stats:
            raise ValueError(
                "expected a module with track_running_stats=True for set_running_stats, got one without running buffers"
            )
        if stats.num_features != self.num_features:
            raise ValueError(f"expected statistics of {self.num_features} channels, got {stats.num_features}")
        if stats.count < 2:
            raise ValueError(
                f"expected statistics of 2 or more values per channel (for the unbiased variance), got {stats.count}"
            )
        self._set_arrays({"running_mean": stats.mean, "running_var": stats.unbiased_var})

    def _set_arrays(self, values):
        """Cast host ``values`` to the module dtype and copy them into the named arrays in place,
        or replace the arrays that cannot take them; everything is prepared before anything changes."""
        host = {key: np.asarray(value).astype(self.dtype) for key, value in values.items()}
        replacements = {
            key: self._backend.from_host(value, self.dtype)
            for key, value in host.items()
            if not self._backend.can_assign(getattr(self, key), value)
        }
        for key, value in host.items():
            if key in replacements:
                setattr(self, key, replacements[key])
            else:
                self._backend.assign(getattr(self, key), value)

    def _fill(self, name, value):
        self._backend.fill(getattr(self, name), value)

    def _state_keys(self):
        keys = []
        if self.affine:
            keys.append("weight")
        if self._use_bias:
            keys.append("bias")
        if self.track_running_stats:
            keys += ["running_mean", "running_var", COUNTER_KEY]
        return keys

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers under PyTorch's keys.

        Returns
        -------
        dict of str to numpy.ndarray
            Host NumPy copies (also on ``device="cuda"``), in this order and
            only for what the configuration has: ``weight`` and ``bias``
            (``(C,)``, module ``dtype``), ``running_mean`` and ``running_var``
            (``(C,)``, module ``dtype``) and ``num_batches_tracked`` (an int64
            0-d array). Gradients are not included.

        Examples
        --------
        >>> import numba_bn as nbn
        >>> list(nbn.BatchNorm1d(4).state_dict())
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
        >>> list(nbn.BatchNorm1d(4, affine=False, track_running_stats=False).state_dict())
        []
        """
        state = {}
        for key in self._state_keys():
            if key == COUNTER_KEY:
                state[key] = np.array(self.num_batches_tracked, dtype=np.int64)
            else:
                state[key] = self._backend.to_host(getattr(self, key))
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Load a ``state_dict()`` of this class or of the PyTorch module.

        Values are cast to the module's ``dtype`` and copied into the existing
        arrays (on the module's device) when those have the right shape and
        dtype and are writeable, else they replace them.
        ``num_batches_tracked`` becomes a Python int. Everything is validated
        before anything is assigned, so a call that raises leaves the module
        unchanged.

        Parameters
        ----------
        state : mapping of str to array-like
            Values under PyTorch's keys (see :meth:`state_dict`): NumPy
            arrays, PyTorch tensors (on any device), numbers or lists, all
            read as host arrays. A missing ``num_batches_tracked`` is allowed,
            as in PyTorch, and leaves the counter as it is.
        strict : bool, default True
            Require exactly the module's keys. With False, missing keys keep
            their current values and unexpected keys are ignored.

        Returns
        -------
        IncompatibleKeys
            A named tuple ``(missing_keys, unexpected_keys)`` of lists of key
            names, as PyTorch returns (both empty after a strict load).

        Raises
        ------
        TypeError
            ``state`` is not a mapping, ``strict`` is not a bool, or a value
            cannot be read as an array of real numbers.
        ValueError
            With ``strict=True``, missing or unexpected keys (all named);
            whatever ``strict``, a vector whose shape is not ``(C,)`` or a
            ``num_batches_tracked`` that is not a non-negative integer
            scalar (the key is named).
        """
        strict = check_bool("strict", strict)
        values, incompatible = read_state(state, self._state_keys(), self.num_features, strict)
        # Cast everything and allocate what cannot be copied in place before
        # changing anything, so that a failure leaves the module as it was.
        counter = values.pop(COUNTER_KEY, None)
        self._set_arrays(values)
        if counter is not None:
            self.num_batches_tracked = counter
        return incompatible

    def extra_repr(self) -> str:
        """The constructor arguments shown inside ``repr(self)``, in PyTorch's form.

        ``bias`` is always shown (PyTorch's repr omits it); ``channel_axis``,
        ``dtype`` and ``activation`` only when they are not the defaults (1,
        float32 and None).

        Returns
        -------
        str
            For example ``"3, eps=1e-05, momentum=0.1, affine=True, bias=True,
            track_running_stats=True"``.
        """
        text = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self._use_bias}, "
            f"track_running_stats={self.track_running_stats}"
        )
        if self.channel_axis != 1:
            text += f", channel_axis={self.channel_axis}"
        if self.dtype != np.float32:
            text += f", dtype={self.dtype}"
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # ------------------------------------------------------------ pickle

    def __getstate__(self) -> dict[str, Any]:
        """Parameters, buffers, gradients and flags as host NumPy arrays; not the recorded forward.

        A pickle (or ``copy.deepcopy``) neither holds the last input nor
        device memory: a CUDA module's arrays are copied to the host, and
        moved back to the GPU when unpickled.
        """
        state = {key: value for key, value in self.__dict__.items() if key not in ("_backend", "_saved", "_repeated")}
        for name in self._ARRAY_NAMES:
            if state[name] is not None:
                state[name] = self._backend.to_host(state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled module on its device; ValueError for a CUDA module without CUDA."""
        target = backend(state["device"])
        for name in self._ARRAY_NAMES:
            if state[name] is not None:
                state[name] = target.from_host(state[name], state[name].dtype)
        state.setdefault("activation", None)  # pickled before activations existed
        self.__dict__.update(state, _backend=target, _saved=None, _repeated=None)


# The constructor, attributes, errors and differences from PyTorch are the same
# for the three classes: their docstrings share this text (help() shows it whole).
_SHARED_CLASS_DOC = """
    Parameters
    ----------
    num_features : int
        ``C``, the number of channels (1 or more).
    eps : float, default 1e-5
        Added to the variance before its square root (0 or more).
    momentum : float or None, default 0.1
        Weight of each training batch in the running statistics, in [0, 1]:
        ``running = (1 - momentum) * running + momentum * batch``. None gives
        the cumulative average of all tracked batches (factor
        ``1 / num_batches_tracked``).
    affine : bool, default True
        Learn a per-channel scale ``weight`` and, unless ``bias=False``, a
        shift ``bias``.
    track_running_stats : bool, default True
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``
        for evaluation mode. Without them every forward, in either mode,
        normalises with the batch's own statistics.
    bias : bool, default True
        Keyword-only. With ``affine=True``, False keeps ``weight`` but no
        ``bias`` (a scale-only affine, as in current PyTorch). No effect
        without ``affine``.
    dtype : numpy.float32 or numpy.float64, default numpy.float32
        Keyword-only. Dtype of the parameters, buffers and gradients, and of
        the input accepted (a float32 module also takes float16 input).
    device : {"cpu", "cuda"}, default "cpu"
        Keyword-only. Where the parameters and buffers live and the kernels
        run: NumPy arrays and Numba CPU kernels, or ``numba.cuda`` device
        arrays and CUDA kernels.
    channel_axis : {1, -1}, default 1
        Keyword-only. The axis of the channels: 1 for channels-first input
        (PyTorch's layout), -1 for channels-last (Keras/TensorFlow's), which
        is read as it is, without a transposed copy.
    activation : {None, "relu"}, default None
        Keyword-only. Applied after the normalisation (and the ``residual``
        of :meth:`forward`), in the same pass: ``"relu"`` fuses the ReLU
        that usually follows, forward and backward.

    Attributes
    ----------
    weight : numpy.ndarray or DeviceArray or None
        ``(C,)`` of ``dtype``, initially ones; None when ``affine=False``.
    bias : numpy.ndarray or DeviceArray or None
        ``(C,)`` of ``dtype``, initially zeros; None when ``affine=False`` or
        ``bias=False``.
    running_mean, running_var : numpy.ndarray or DeviceArray or None
        ``(C,)`` of ``dtype``, initially zeros and ones, updated in place by
        training forwards; None when ``track_running_stats=False``.
    num_batches_tracked : int or None
        The number of training forwards while tracking statistics (a Python
        int); None when ``track_running_stats=False``.
    grad_weight, grad_bias : numpy.ndarray or DeviceArray or None
        ``(C,)`` of ``dtype``: the gradients set (overwritten) by
        :meth:`backward`; None before it, and when the parameter does not exist.
    training : bool
        True (training mode) after construction; see :meth:`train`, :meth:`eval`.
    num_features, eps, momentum, affine, track_running_stats, channel_axis, activation, device
        The constructor's arguments, checked (``device`` follows :meth:`to`).
    dtype : numpy.dtype
        The ``dtype`` argument as a ``numpy.dtype``.

    Raises
    ------
    TypeError
        An argument of the wrong type (e.g. a float ``num_features``, a
        non-bool flag, a non-str ``device`` or ``activation``), or a ``dtype`` other than
        float32 or float64.
    ValueError
        An argument out of range (``num_features`` < 1, negative or infinite
        ``eps``, ``momentum`` outside [0, 1], ``channel_axis`` other than 1
        or -1, a device other than "cpu" and "cuda", an activation other
        than None and "relu"), or ``device="cuda"``
        without a usable CUDA device.

    Notes
    -----
    Differences from ``torch.nn.BatchNorm*d``: gradients come from an
    explicit :meth:`backward` (no autograd), which overwrites ``grad_weight``
    and ``grad_bias``; the input's dtype must match the module's (no type
    promotion; float16 into a float32 module is the one mixed case);
    ``momentum`` must lie in [0, 1]; ``num_batches_tracked`` is a Python int,
    not a tensor; ``channel_axis=-1`` reads channels-last input; devices are
    the strings "cpu" and "cuda". Statistics are accumulated in float64, so
    results can differ from PyTorch's float32 ones in the last bits.
"""


class BatchNorm1d(_BatchNorm):
    __doc__ = (
        """Batch normalisation over a batch of feature vectors or sequences.

    Accepts ``(N, C)`` or ``(N, C, L)`` input, or ``(N, L, C)`` with
    ``channel_axis=-1``; statistics are per channel ``C`` over all other axes.
    """
        + _SHARED_CLASS_DOC
        + """
    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> bn = nbn.BatchNorm1d(3)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(64, 3)).astype(np.float32)
    >>> y = bn(x)
    >>> bool(np.allclose(y.mean(axis=0), 0, atol=1e-5)), bool(np.allclose(y.std(axis=0), 1, atol=1e-3))
    (True, True)
    >>> bn.num_batches_tracked
    1
    >>> grad_x = bn.backward(np.ones_like(y))
    >>> bn.grad_bias
    array([64., 64., 64.], dtype=float32)
    """
    )

    _input_ranks = (2, 3)
    _rank_description = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    __doc__ = (
        """Batch normalisation over a batch of images (2-D feature maps).

    Accepts ``(N, C, H, W)`` input, or ``(N, H, W, C)`` with
    ``channel_axis=-1``; statistics are per channel ``C`` over all other axes.
    """
        + _SHARED_CLASS_DOC
        + """
    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> bn = nbn.BatchNorm2d(3, channel_axis=-1)
    >>> images = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)  # channels last
    >>> y = bn(images)
    >>> y.shape, y.dtype
    ((8, 16, 16, 3), dtype('float32'))
    >>> y_eval = bn.eval()(images)  # normalised with the running statistics
    """
    )

    _input_ranks = (4,)
    _rank_description = "4D"


class BatchNorm3d(_BatchNorm):
    __doc__ = (
        """Batch normalisation over a batch of volumes (3-D feature maps).

    Accepts ``(N, C, D, H, W)`` input, or ``(N, D, H, W, C)`` with
    ``channel_axis=-1``; statistics are per channel ``C`` over all other axes.
    """
        + _SHARED_CLASS_DOC
        + """
    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> bn = nbn.BatchNorm3d(2, dtype=np.float64, momentum=None)
    >>> volumes = np.random.default_rng(0).standard_normal((4, 2, 3, 5, 5))
    >>> y = bn(volumes)
    >>> bn
    BatchNorm3d(2, eps=1e-05, momentum=None, affine=True, bias=True, track_running_stats=True, dtype=float64)
    """
    )

    _input_ranks = (5,)
    _rank_description = "5D"
