"""``BatchNorm1d``, ``BatchNorm2d`` and ``BatchNorm3d`` with PyTorch's semantics."""

import numpy as np

from . import _core
from ._device import (
    check_device_float_input,
    check_device_vector,
    is_device_array,
    reject_device_array,
    require_cuda,
    to_device,
    to_host,
)
from ._state import COUNTER_KEY, read_state
from ._validation import (
    check_bool,
    check_channel_axis,
    check_channel_vector,
    check_channels,
    check_float_input,
    check_ndarray,
    check_num_features,
    check_parameter_dtype,
    check_real,
    check_values_per_channel,
    describe_type,
    native_dtype,
)

SUPPORTED_DEVICES = ("cpu", "cuda")


def _check_device(device):
    if not isinstance(device, str):
        raise TypeError(f"expected device to be a str, got {describe_type(device)}")
    if device not in SUPPORTED_DEVICES:
        raise ValueError(f"expected device to be one of {list(SUPPORTED_DEVICES)}, got {device!r}")
    if device == "cuda":
        require_cuda()
    return device


def _cuda_core():
    from . import _cuda_core

    return _cuda_core


def _on_device(array, device):
    """``array`` (host or device, or None) as an array of ``device``."""
    if array is None:
        return None
    if device == "cuda":
        return array if is_device_array(array) else to_device(array)
    return to_host(array) if is_device_array(array) else array


class _BatchNorm:
    """Shared implementation; subclasses fix the accepted input ranks."""

    _input_ranks = ()
    _rank_description = ""
    _ARRAY_NAMES = ("weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias")

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        *,
        bias=True,
        dtype=np.float32,
        device="cpu",
        channel_axis=1,
    ):
        self.num_features = check_num_features(num_features)
        self.eps = check_real("eps", eps, minimum=0.0)
        self.momentum = None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)
        self.affine = check_bool("affine", affine)
        self.track_running_stats = check_bool("track_running_stats", track_running_stats)
        self._use_bias = check_bool("bias", bias) and self.affine
        self.dtype = check_parameter_dtype(dtype)
        self.device = _check_device(device)
        self.channel_axis = check_channel_axis(channel_axis)
        self.training = True

        channels = self.num_features
        self.weight = np.ones(channels, self.dtype) if self.affine else None
        self.bias = np.zeros(channels, self.dtype) if self._use_bias else None
        if self.track_running_stats:
            self.running_mean = np.zeros(channels, self.dtype)
            self.running_var = np.ones(channels, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self._saved = None
        if self.device != "cpu":
            for name in self._ARRAY_NAMES:
                setattr(self, name, _on_device(getattr(self, name), self.device))

    # ------------------------------------------------------------ forward

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """Normalise ``x``; in training mode also update the running buffers.

        Returns a new C-contiguous array with ``x``'s shape and dtype (a
        ``numba.cuda`` device array on ``device="cuda"``).
        """
        x = self._check_input(x)
        core = _cuda_core() if self.device == "cuda" else _core
        use_batch_stats = self.training or not self.track_running_stats
        updates_buffers = self.training and self.track_running_stats
        self._check_state(writeable_buffers=updates_buffers)
        axis = self.channel_axis % x.ndim
        if use_batch_stats:
            check_values_per_channel(x, axis)
            stats = core.batch_statistics(x, axis)
            y, saved = core.forward(x, axis, stats, None, None, self.weight, self.bias, self.eps)
        else:
            y, saved = core.forward(
                x, axis, None, self.running_mean, self.running_var, self.weight, self.bias, self.eps
            )
        if updates_buffers:
            self.num_batches_tracked += 1
            factor = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
            core.update_running(self.running_mean, self.running_var, stats, factor)
        self._saved = saved
        return y

    def backward(self, grad_output):
        """Gradient of the loss w.r.t. the input of the most recent forward.

        Also sets ``grad_weight`` and ``grad_bias`` (overwriting them) when the
        module is affine. After an eval-mode forward the running statistics
        are treated as constants.
        """
        saved = self._saved
        if saved is None:
            raise RuntimeError("backward() needs a forward() first: no forward pass has been recorded")
        if self.device == "cuda":
            grad_output = check_device_float_input("grad_output", grad_output)
        else:
            check_ndarray("grad_output", reject_device_array("grad_output", grad_output))
        if grad_output.shape != saved.x.shape:
            raise ValueError(
                f"expected grad_output of shape {saved.x.shape} (the forward input's), "
                f"got {grad_output.shape}"
            )
        if native_dtype(grad_output) != native_dtype(saved.x):
            raise TypeError(
                f"expected grad_output of dtype {native_dtype(saved.x)} (the forward input's), "
                f"got {grad_output.dtype}"
            )
        if self.device == "cuda":
            grad_input, sum_dy_xhat, sum_dy = _cuda_core().backward(saved, grad_output, self.affine, self.dtype)
            if self.affine:
                self.grad_weight = sum_dy_xhat
                self.grad_bias = sum_dy if self._use_bias else None
            return grad_input
        grad_input, sum_dy_xhat, sum_dy = _core.backward(saved, grad_output, self.affine)
        if self.affine:
            self.grad_weight = sum_dy_xhat.astype(self.dtype)
            self.grad_bias = sum_dy.astype(self.dtype) if self._use_bias else None
        return grad_input

    def _check_input(self, x):
        """``x`` checked (and, on the GPU, as a device array) or an exception."""
        if self.device == "cuda":
            x = check_device_float_input("input", x)
        else:
            check_float_input("input", reject_device_array("input", x))
        if x.ndim not in self._input_ranks:
            raise ValueError(f"expected {self._rank_description} input (got {x.ndim}D input)")
        dtype = native_dtype(x)
        allowed = (self.dtype, np.dtype(np.float16)) if self.dtype == np.float32 else (self.dtype,)
        if dtype not in allowed:
            hint = f"; convert it with x.astype(np.{self.dtype}) or build the module with dtype=np.{dtype}"
            raise TypeError(
                f"expected input of dtype {' or '.join(map(str, allowed))} for a {self.dtype} "
                f"{type(self).__name__}, got {x.dtype}" + (hint if dtype in (np.float32, np.float64) else "")
            )
        check_channels(x, self.channel_axis, self.num_features)
        return x

    def _check_state(self, writeable_buffers):
        """Parameters and buffers may have been reassigned by the user: re-check them."""
        channels = self.num_features
        check_vector = check_device_vector if self.device == "cuda" else check_channel_vector
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

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode; returns ``self``."""
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"training mode is expected to be boolean, got {describe_type(mode)}")
        self.training = bool(mode)
        return self

    def eval(self):
        """Set evaluation mode; returns ``self``."""
        return self.train(False)

    def to(self, device):
        """Move parameters, buffers and gradients to ``device``; returns ``self``.

        On ``"cuda"`` they become ``numba.cuda`` device arrays, on ``"cpu"``
        NumPy arrays. A move forgets the recorded forward (its input lives on
        the old device): call forward again before backward.
        """
        device = _check_device(device)
        if device == self.device:
            return self
        moved = {name: _on_device(getattr(self, name), device) for name in self._ARRAY_NAMES}
        for name, value in moved.items():
            setattr(self, name, value)
        self.device = device
        self._saved = None
        return self

    def cpu(self):
        """Move parameters and buffers to the host; returns ``self``."""
        return self.to("cpu")

    def cuda(self):
        """Move parameters and buffers to the GPU; returns ``self``."""
        return self.to("cuda")

    # ------------------------------------------------------------- state

    def reset_running_stats(self):
        """Running mean 0, running variance 1, batch counter 0 (in place)."""
        if self.track_running_stats:
            self._fill("running_mean", 0)
            self._fill("running_var", 1)
            self.num_batches_tracked = 0

    def reset_parameters(self):
        """Reset the running statistics, weight to 1 and bias to 0 (in place)."""
        self.reset_running_stats()
        if self.weight is not None:
            self._fill("weight", 1)
        if self.bias is not None:
            self._fill("bias", 0)

    def _fill(self, name, value):
        array = getattr(self, name)
        if is_device_array(array):
            array.copy_to_device(np.full(array.shape, value, array.dtype))
        else:
            array[...] = value

    def _state_keys(self):
        keys = []
        if self.affine:
            keys.append("weight")
        if self._use_bias:
            keys.append("bias")
        if self.track_running_stats:
            keys += ["running_mean", "running_var", COUNTER_KEY]
        return keys

    def state_dict(self):
        """Copies of the parameters and buffers under PyTorch's keys."""
        state = {}
        for key in self._state_keys():
            if key == COUNTER_KEY:
                state[key] = np.array(self.num_batches_tracked, dtype=np.int64)
            else:
                value = getattr(self, key)
                state[key] = to_host(value) if is_device_array(value) else np.array(value, copy=True)
        return state

    def load_state_dict(self, state, strict=True):
        """Load a ``state_dict()`` of this class or of the PyTorch module.

        Values are copied into the existing arrays (cast to the module's dtype).
        Everything is validated before anything is assigned. Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        strict = check_bool("strict", strict)
        values, incompatible = read_state(state, self._state_keys(), self.num_features, strict)
        for key, value in values.items():
            if key == COUNTER_KEY:
                self.num_batches_tracked = value
                continue
            current = getattr(self, key)
            if self.device == "cuda":
                value = value.astype(self.dtype)
                if is_device_array(current) and current.shape == value.shape and current.dtype == self.dtype:
                    current.copy_to_device(value)
                else:
                    setattr(self, key, to_device(value))
            elif (
                isinstance(current, np.ndarray)
                and current.shape == value.shape
                and current.dtype == self.dtype
                and current.flags.writeable
            ):
                current[...] = value
            else:
                setattr(self, key, value.astype(self.dtype))
        return incompatible

    def extra_repr(self):
        text = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self._use_bias}, "
            f"track_running_stats={self.track_running_stats}"
        )
        if self.channel_axis != 1:
            text += f", channel_axis={self.channel_axis}"
        if self.dtype != np.float32:
            text += f", dtype={self.dtype}"
        return text

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over ``(N, C)`` or ``(N, C, L)`` input (``(N, L, C)`` with channel_axis=-1)."""

    _input_ranks = (2, 3)
    _rank_description = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over ``(N, C, H, W)`` input (``(N, H, W, C)`` with channel_axis=-1)."""

    _input_ranks = (4,)
    _rank_description = "4D"


class BatchNorm3d(_BatchNorm):
    """Batch normalisation over ``(N, C, D, H, W)`` input (``(N, D, H, W, C)`` with channel_axis=-1)."""

    _input_ranks = (5,)
    _rank_description = "5D"
