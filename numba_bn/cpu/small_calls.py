"""Small inputs in one compiled call: a module's forward or backward when the call repeats the last one.

A small input costs little to compute (8,192 values take a few microseconds)
but the general path pays for each of its steps separately: laying the
operands out, checking the parameters, one dispatch per kernel and per
channel step. Training loops call a module with the same shapes at every
step, so a module keeps a :class:`RepeatedCall` from its last small call and,
when the next call matches it (checked in O(1): the input's shape, strides and
dtype, the mode, and the very same parameter and buffer objects), runs the
whole step in one compiled function: the same serial kernels, with the same
work split, as the general path, so the results are bit-identical to it.

Only the plain case takes this lane: a C-contiguous NumPy input of float32 or
float64 below ``config.SERIAL_BELOW`` values, parameters and buffers in the
input's dtype, no residual or activation, and either no ``out`` or a
writeable C-contiguous one like the input, apart from it or the input itself.
Anything else, or
anything that differs from the last call, goes the general way (which checks
it, raises the errors, and makes the next lane).
"""

import numpy as np
from numba import njit

from .. import config
from .._backend import SavedForward
from .._layout import ROWS, RUNS, kernel_operands
from . import channel_math, fingerprint, kernels

_OPTIONS = dict(cache=True)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ABSENT = np.empty(0)
#: The origin of every flat operand, the plain normalisation's mode, and the kernels' "none" values.
_CONSTANTS = (0, 0, kernels.NO_REFERENCE, kernels.NO_MASK, kernels.NO_POSITIONS)


# ----------------------------------------------------- compiled steps
# Every argument of the kernels comes from Python as the general path passes
# it (a global array would be a read-only constant here, and a constant
# argument another compiled variant of the kernel): the steps call the very
# kernels the general path calls. The elementwise kernels of the two layouts
# take different work-split arguments; these wrappers give both one signature.


@njit(inline="always", **_OPTIONS)
def _normalize_runs(x, dy, out, none, origin, strides, shape, position, coefficients, mode, no_mask, work):
    kernels.elementwise_runs_serial(
        x, origin, strides, dy, origin, strides, out, origin, strides, none, origin, strides, shape, position,
        coefficients, mode, no_mask, work,
    )


@njit(inline="always", **_OPTIONS)
def _normalize_rows(x, dy, out, none, origin, strides, shape, position, coefficients, mode, no_mask, work):
    kernels.elementwise_rows_serial(
        x, origin, strides, dy, origin, strides, out, origin, strides, none, origin, strides, shape, coefficients,
        mode, no_mask, work,
    )


def _forward(
    x, target, constants, reduce_shape, reduce_strides, reduce_work, shape, strides, position, work,
    channels, batch_stats, eps, weight, bias, running_mean, running_var, update, factor, compute,
):
    """The whole forward: with ``batch_stats`` the batch's statistics, and with ``update`` the
    running buffers' update by ``factor``; else the running buffers normalise. Returns ``(y, count, saved)``:
    the flat result (in ``target``, or a new array when ``target`` is empty), the batch's count (0
    without ``batch_stats``), and the backward's rows (``channel_math.forward_coefficients``). ``compute``: an empty array of the compute dtype;
    ``constants``: what the kernels take for "none" (see ``_constants``)."""
    origin, plain, no_reference, no_mask, no_positions = constants
    saved = np.empty((3, channels))
    coefficients = np.zeros((4, channels), compute.dtype)
    out = target if target.size else np.empty(x.size, compute.dtype)  # the input's dtype (float32 or float64)
    count = 0
    batch_mean = m2 = np.empty(0)
    if batch_stats:
        count, batch_mean, m2 = _reduce(  # noqa: F821
            x, origin, reduce_strides, x, origin, reduce_strides, reduce_shape, no_reference, no_mask, no_positions,
            reduce_work,
        )
        _forward_coefficients(batch_mean, m2, float(count), eps, weight, bias, saved, coefficients)  # noqa: F821
    else:
        _forward_coefficients(running_mean, running_var, 1.0, eps, weight, bias, saved, coefficients)  # noqa: F821
    _normalize(x, x, out, out[:0], origin, strides, shape, position, coefficients, plain, no_mask, work)  # noqa: F821
    if batch_stats and update:  # last: every allocation that could fail has been made
        _update_running(running_mean, running_var, batch_mean, m2, float(count), factor)  # noqa: F821
    return out, count, saved


def _backward(
    x, dy, constants, reduce_shape, reduce_strides, reduce_work, shape, strides, position, work,
    mean, invstd, weight, count, add, compute,
):
    """``(grad_input, sums)`` after a forward with batch statistics: the flat input gradient and the
    weight's and bias's gradients (float64 rows); ``add``: the elementwise mode that adds ``dy``."""
    origin, _, _, no_mask, no_positions = constants
    sums = np.empty((2, mean.size))
    coefficients = np.empty((4, mean.size), compute.dtype)
    _, sum_dy, sum_dy_xmu = _reduce(  # noqa: F821
        x, origin, reduce_strides, dy, origin, reduce_strides, reduce_shape, mean, no_mask, no_positions, reduce_work,
    )
    _backward_coefficients(sum_dy, sum_dy_xmu, mean, invstd, weight, count, sums, coefficients)  # noqa: F821
    out = np.empty(x.size, compute.dtype)  # the input's dtype (float32 or float64)
    _normalize(x, dy, out, out[:0], origin, strides, shape, position, coefficients, add, no_mask, work)  # noqa: F821
    return out, sums


def _compiled(function, layout, **names):
    """``function`` compiled for ``layout`` with its kernels bound (``names``), and the per-channel
    steps of ``channel_math`` bound as they are now: what the step calls is fixed when it is made."""
    names.update(
        _forward_coefficients=channel_math.forward_coefficients, _update_running=channel_math.update_running,
        _backward_coefficients=channel_math.backward_coefficients,
    )
    namespace = dict(function.__globals__, **names)
    return njit(**_OPTIONS)(kernels._copy(function, namespace, f"{function.__name__}_{layout}"))


#: layout -> (forward, backward), compiled on first use. A step changes no state until its last
#: statement (the running buffers' update), after every allocation that could fail.
_STEPS = {
    RUNS: (
        _compiled(_forward, RUNS, _reduce=kernels.reduce_runs_serial, _normalize=_normalize_runs),
        _compiled(_backward, RUNS, _reduce=kernels.reduce_runs_serial, _normalize=_normalize_runs),
    ),
    ROWS: (
        _compiled(_forward, ROWS, _reduce=kernels.reduce_rows_serial, _normalize=_normalize_rows),
        _compiled(_backward, ROWS, _reduce=kernels.reduce_rows_serial, _normalize=_normalize_rows),
    ),
}


# ------------------------------------------------------------- the lane


class RepeatedCall:
    """A module's last small call on the CPU, to run again in one compiled call while calls repeat it.

    It keeps the objects it was made for (the parameters and buffers, which
    keeps their identities from being reused) and the input's layout as the
    kernels read it.
    """

    __slots__ = (
        "shape", "strides", "dtype", "channel_axis", "training", "track_running_stats", "save", "weight", "bias",
        "running_mean", "running_var", "axis", "compute", "layout", "operands", "vectors",
    )

    def __init__(self, module, x, axis, save):
        self.shape, self.strides, self.dtype = x.shape, x.strides, x.dtype  # C-contiguous
        self.channel_axis, self.axis = module.channel_axis, axis
        self.training, self.track_running_stats, self.save = module.training, module.track_running_stats, save
        self.weight, self.bias = module.weight, module.bias
        self.running_mean, self.running_var = module.running_mean, module.running_var
        #: As the compiled step takes them (an absent one is empty); valid while ``repeats`` holds.
        self.vectors = tuple(
            _ABSENT if vector is None else vector
            for vector in (self.weight, self.bias, self.running_mean, self.running_var)
        )
        self.compute = np.empty(0, x.dtype)  # float32 and float64 compute in their own dtype
        # The work split of the general path's serial kernels, so that the results are the same bits.
        from .backend import _elementwise_part, _row_blocks, _split

        reduce_layout, reduce_shape, ((_, _, reduce_strides),), _ = kernel_operands(axis, [x])
        layout, shape, ((_, _, strides),), position = kernel_operands(axis, [x], memory_order=True)
        self.layout = layout
        self.operands = (
            reduce_shape, reduce_strides, _split(reduce_layout, x, reduce_shape), shape, strides, position,
            _row_blocks(x) if layout == ROWS else _elementwise_part(),
        )

    @classmethod
    def of(cls, module, x, axis, save):
        """The lane for a call that just succeeded on the general path, or None where it does not apply."""
        if not (
            type(x) is np.ndarray and x.dtype in _FLOATS and x.flags.c_contiguous and 0 < x.size < config.SERIAL_BELOW
            and module.activation is None and all(
                vector is None or (type(vector) is np.ndarray and vector.dtype == x.dtype)
                for vector in (module.weight, module.bias, module.running_mean, module.running_var)
            )
        ):
            return None
        return cls(module, x, axis, save)

    def repeats(self, module, x, save):
        """Whether a forward of ``module`` on ``x`` is this call again (O(1))."""
        return (
            type(x) is np.ndarray and x.shape == self.shape and x.strides == self.strides and x.dtype == self.dtype
            and save is self.save and module.training is self.training
            and module.track_running_stats is self.track_running_stats and module.channel_axis == self.channel_axis
            and module.weight is self.weight and module.bias is self.bias
            and module.running_mean is self.running_mean and module.running_var is self.running_var
            and module.activation is None
            and self._buffers_unchanged()
        )

    def _buffers_unchanged(self):
        """The checks of the general path that an array's owner can undo in place."""
        channels = (self.shape[self.axis],)
        for vector in (self.weight, self.bias, self.running_mean, self.running_var):
            if vector is not None and vector.shape != channels:
                return False
        updated = self.training and self.track_running_stats
        return not updated or (self.running_mean.flags.writeable and self.running_var.flags.writeable)

    def takes_out(self, out, x):
        """Whether the result of a forward on ``x`` can go to ``out`` here (O(1)): a writeable C-contiguous
        array of ``x``'s shape and dtype, apart from ``x`` or ``x`` itself."""
        return (
            type(out) is np.ndarray and out.shape == self.shape and out.dtype == self.dtype
            and out.flags.c_contiguous and out.flags.writeable and (out is x or not np.may_share_memory(out, x))
        )

    def forward(self, module, x, update, factor, out=None, keep=True):
        """``(y, saved)``: the forward on ``x`` into ``out`` (or a new array), with ``update`` updating the
        running buffers by ``factor``; ``saved`` is None unless the lane's calls save and ``keep``."""
        flat = x.reshape(-1)
        flat.flags.writeable = False  # the kernels are compiled for read-only input
        batch_stats = self.training or not self.track_running_stats
        save = self.save and keep
        # Everything that could fail before the step that updates the running buffers.
        sample = fingerprint.record(x) if save else None
        target = self.compute if out is None else out.reshape(-1)  # empty: the step allocates
        y, count, saved_rows = _STEPS[self.layout][0](
            flat, target, _CONSTANTS, *self.operands, self.shape[self.axis], batch_stats, float(module.eps),
            *self.vectors,
            update, factor, self.compute,
        )
        saved = None
        if save:
            if not batch_stats:
                count = x.size // self.shape[self.axis]
            saved = SavedForward(x, self.axis, batch_stats, saved_rows[0], saved_rows[1], saved_rows[2], count, sample)
        return (y.reshape(self.shape) if out is None else out), saved

    def takes_backward(self, saved, grad_output):
        """Whether the backward of ``saved`` with ``grad_output`` can run here (O(1))."""
        return (
            saved.x.shape == self.shape and saved.batch_stats and saved.relu_mask is None and not saved.residual
            and saved.x.dtype == self.dtype and saved.x.flags.c_contiguous and saved.channel_axis == self.axis
            and type(grad_output) is np.ndarray and grad_output.shape == self.shape
            and grad_output.dtype == self.dtype and grad_output.flags.c_contiguous
        )

    def backward(self, saved, grad_output):
        """``(grad_input, sums)``: the input's gradient and the float64 rows ``sum(dy * xhat)``, ``sum(dy)``."""
        fingerprint.check_unchanged(saved.x, saved.input_sample)
        x, dy = saved.x.reshape(-1), grad_output.reshape(-1)
        x.flags.writeable = False
        dy.flags.writeable = False
        grad_input, sums = _STEPS[self.layout][1](
            x, dy, _CONSTANTS, *self.operands, saved.mean, saved.invstd, saved.weight, float(saved.count),
            kernels.ADD, self.compute,
        )
        return grad_input.reshape(self.shape), sums
