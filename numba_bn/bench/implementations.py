"""The table of implementations: for each device, every way to run each operation.

One table serves the benchmarks (``benchmarks/``, ``python -m numba_bn
bench``) and the correctness test that checks every benchmarked path against
a float64 reference, so nothing is timed that is not also tested.

An implementation's ``prepare(case, data)`` does all set-up outside the timed
region (converting arrays, running the forward that a backward needs) and
returns a :class:`Prepared`: ``run()`` is what gets timed, and
``collect(run())`` turns its result into NumPy arrays in the case's storage
layout (``{}`` for the copy roofline, which computes nothing to check).

Every implementation runs the plain operations (:data:`~.cases.OPERATIONS`);
the fused BatchNorm + residual add + ReLU and the ``out=`` operations
(:data:`~.cases.EXTRA_OPERATIONS`) are run by those that list them in
:attr:`Implementation.operations`: numba_bn, PyTorch and the roofline on the CPU
run them all, JAX the fused training forward and backward only (its arrays
are immutable: there is no ``out=``). Every implementation runs every dtype
of :data:`~.cases.DTYPES` but JAX, whose arithmetic is float32 (float64 would
need JAX's process-wide ``jax_enable_x64``): see :attr:`Implementation.dtypes`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np

import numba_bn as nbn

from .. import _backend
from .cases import ALL_OPERATIONS, CHANNELS_LAST, DTYPES, FUSED_OPERATIONS, OPERATIONS, Case, CaseData

EPS = 1e-5
MOMENTUM = 0.1

#: What each operation returns, by name (checked by the correctness test).
OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "train_forward": ("y", "running_mean", "running_var"),
    "eval_forward": ("y",),
    "train_backward": ("grad_input", "grad_weight", "grad_bias"),
    "train_forward_add_relu": ("y", "running_mean", "running_var"),
    "train_backward_add_relu": ("grad_input", "grad_residual", "grad_weight", "grad_bias"),
    "eval_out_add_relu": ("y",),
    "eval_out": ("y",),
}

#: The implementation the others are compared with.
OURS = "numba_bn"
#: The bandwidth roofline: a copy of an array of the input's size.
ROOFLINE = "copy"

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Prepared:
    """A case ready to time: ``run()`` does the work, ``collect`` reads its result back."""

    run: Callable[[], Any]
    collect: Callable[[Any], Outputs]


@dataclass(frozen=True)
class Implementation:
    """One way to run the operations on one device."""

    name: str
    device: str
    description: str
    prepare: Callable[[Case, CaseData], Prepared]
    requires: tuple[str, ...] = ()  # importable modules it needs
    usable: Callable[[], bool] = lambda: True  # a run-time check beyond the imports
    install_hint: str = ""  # how to install what ``requires`` names
    unusable_hint: str = ""  # why ``usable()`` can be False, and what to do about it
    operations: tuple[str, ...] = OPERATIONS  # the operations ``prepare`` accepts
    dtypes: tuple[str, ...] = DTYPES  # the data types ``prepare`` accepts
    dtypes_hint: str = ""  # why some data types are not in ``dtypes``

    def supports(self, operation: str) -> bool:
        """Whether ``prepare`` accepts cases of ``operation``."""
        return operation in self.operations

    def runs(self, case: Case) -> bool:
        """Whether ``prepare`` accepts ``case``: its operation and its dtype."""
        return self.supports(case.operation) and case.dtype in self.dtypes

    def is_available(self) -> bool:
        """Whether the modules it needs are importable and its device is usable."""
        return all(_importable(module) for module in self.requires) and self.usable()

    def unavailable_reason(self) -> str | None:
        """Why it cannot run here and how to change that, in one sentence; None when it can run.

        Returns
        -------
        str or None
            For example "torch is left out: the torch package is not
            installed. To compare with it: pip install ...".
        """
        missing = [module for module in self.requires if not _importable(module)]
        if missing:
            packages = ", ".join(missing)
            return (f"{self.name} is left out: the {packages} package is not installed. "
                    f"{self.install_hint}".rstrip())
        if not self.usable():
            return f"{self.name} is left out: {self.unusable_hint or 'it cannot run here'}"
        return None


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cuda_available() -> bool:
    """Whether ``numba.cuda`` sees a usable GPU (False, not an error, without CUDA)."""
    return _backend.cuda_available()


def torch_cuda_available() -> bool:
    """Whether PyTorch is installed with CUDA support and sees a GPU."""
    import torch

    return bool(torch.cuda.is_available())


def _module_class(ndim: int):
    return {2: nbn.BatchNorm1d, 3: nbn.BatchNorm1d, 4: nbn.BatchNorm2d, 5: nbn.BatchNorm3d}[ndim]


def _reduce_axes(case: Case) -> tuple[int, ...]:
    """Axes of the stored array that are reduced: all but the channel axis."""
    ndim = len(case.shape)
    channel = ndim - 1 if case.layout == CHANNELS_LAST else 1
    return tuple(axis for axis in range(ndim) if axis != channel)


def _per_channel_shape(case: Case) -> tuple[int, ...]:
    shape = [1] * len(case.shape)
    shape[-1 if case.layout == CHANNELS_LAST else 1] = case.channels
    return tuple(shape)


def _count(case: Case) -> int:
    return int(np.prod(case.shape)) // case.channels


# ------------------------------------------------------------------ numba_bn


def _prepare_numba_bn(case: Case, data: CaseData, device: str = "cpu") -> Prepared:
    """The public module API, as a user calls it."""
    fused = case.operation in FUSED_OPERATIONS
    module = _module_class(len(case.shape))(
        case.channels, eps=EPS, momentum=MOMENTUM, dtype=data.weight.dtype,
        device=device, channel_axis=case.channel_axis, **({"activation": "relu"} if fused else {}),
    )
    module.load_state_dict(
        {"weight": data.weight, "bias": data.bias,
         "running_mean": data.running_mean, "running_var": data.running_var}
    )
    x, grad_output = data.x, data.grad_output
    if device == "cuda":
        from ..cuda.numba_cuda import cuda

        x, grad_output = cuda.to_device(x), cuda.to_device(grad_output)

    if case.operation == "train_forward":
        def run():
            y = module(x)
            return {"y": y, "running_mean": module.running_mean, "running_var": module.running_var}
    elif case.operation == "eval_forward":
        module.eval()

        def run():
            # Inference, as PyTorch's side runs it (under no_grad): nothing is kept for a backward.
            with nbn.no_grad():
                return {"y": module(x)}
    elif case.operation == "train_backward":
        module(x)

        def run():
            grad_input = module.backward(grad_output)
            return {"grad_input": grad_input, "grad_weight": module.grad_weight,
                    "grad_bias": module.grad_bias}
    else:
        run = _numba_bn_extra_run(case, module, x, grad_output, data.residual)

    return Prepared(run, _collect_host_arrays)


def _numba_bn_extra_run(case: Case, module, x, grad_output, residual) -> Callable[[], Outputs]:
    """The timed call of an operation of :data:`~.cases.EXTRA_OPERATIONS` (host arrays only)."""
    if case.operation == "train_forward_add_relu":
        def run():
            y = module(x, residual=residual)
            return {"y": y, "running_mean": module.running_mean, "running_var": module.running_var}
    elif case.operation == "train_backward_add_relu":
        module(x, residual=residual)

        def run():
            grad_input, grad_residual = module.backward(grad_output)
            return {"grad_input": grad_input, "grad_residual": grad_residual,
                    "grad_weight": module.grad_weight, "grad_bias": module.grad_bias}
    else:  # eval_out_add_relu, eval_out: inference, every call writes into the same buffer
        # Under no_grad, as PyTorch's calls on tensors that need no gradient: nothing is kept for a
        # backward (a ReLU's mask included).
        from .._grad_mode import no_grad

        module.eval()
        out = np.empty_like(x)
        if case.operation == "eval_out_add_relu":
            def run():
                with no_grad():
                    return {"y": module(x, residual=residual, out=out)}
        else:
            def run():
                with no_grad():
                    return {"y": module(x, out=out)}
    return run


def _collect_host_arrays(result: Mapping[str, Any]) -> Outputs:
    """Copies of NumPy arrays, or of ``numba.cuda`` device arrays brought to the host."""
    return {
        name: value.copy_to_host() if hasattr(value, "copy_to_host") else np.array(value)
        for name, value in result.items()
    }


def _prepare_numba_bn_cuda(case: Case, data: CaseData) -> Prepared:
    return _prepare_numba_bn(case, data, device="cuda")


# --------------------------------------------------------------------- NumPy


def _prepare_numpy(case: Case, data: CaseData) -> Prepared:
    """Plain vectorised NumPy, the way a NumPy user would write it."""
    axes = _reduce_axes(case)
    per_channel = _per_channel_shape(case)
    count = _count(case)
    x, grad_output = data.x, data.grad_output
    weight, bias = data.weight.reshape(per_channel), data.bias.reshape(per_channel)
    # float16 sums of a channel overflow past 65504: accumulate in float32, as a user must.
    accumulate = np.float32 if x.dtype == np.float16 else None

    if case.operation == "train_forward":
        running_mean, running_var = data.running_mean.copy(), data.running_var.copy()

        def run():
            mean = x.mean(axis=axes, keepdims=True, dtype=accumulate)
            var = x.var(axis=axes, keepdims=True, dtype=accumulate)
            y = ((x - mean) / np.sqrt(var + EPS) * weight + bias).astype(x.dtype, copy=False)
            running_mean[...] = (1 - MOMENTUM) * running_mean + MOMENTUM * mean.ravel()
            running_var[...] = (1 - MOMENTUM) * running_var + MOMENTUM * var.ravel() * count / (count - 1)
            return {"y": y, "running_mean": running_mean, "running_var": running_var}
    elif case.operation == "eval_forward":
        mean, var = data.running_mean.reshape(per_channel), data.running_var.reshape(per_channel)

        def run():
            return {"y": ((x - mean) / np.sqrt(var + EPS) * weight + bias).astype(x.dtype, copy=False)}
    else:
        # What a forward saves for its backward, as PyTorch's native_batch_norm does.
        mean = x.mean(axis=axes, keepdims=True, dtype=accumulate)
        invstd = 1 / np.sqrt(x.var(axis=axes, keepdims=True, dtype=accumulate) + EPS)

        def run():
            xhat = (x - mean) * invstd
            grad_bias = grad_output.sum(axis=axes, keepdims=True, dtype=accumulate)
            grad_weight = (grad_output * xhat).sum(axis=axes, keepdims=True)
            grad_input = weight * invstd * (grad_output - grad_bias / count - xhat * (grad_weight / count))
            return {"grad_input": grad_input.astype(x.dtype, copy=False),
                    "grad_weight": grad_weight.ravel(), "grad_bias": grad_bias.ravel()}

    return Prepared(run, _collect_host_arrays)


# ------------------------------------------------------------------- PyTorch


def _prepare_torch(case: Case, data: CaseData, device: str = "cpu") -> Prepared:
    """``torch.nn.functional.batch_norm`` forward, ``aten.native_batch_norm_backward`` backward.

    A channels-last case hands PyTorch the same buffer, viewed in logical
    ``(N, C, ...)`` order: that is ``torch.channels_last`` memory format.
    """
    import torch

    ndim = len(case.shape)
    to_logical = (0, ndim - 1) + tuple(range(1, ndim - 1))
    to_storage = (0,) + tuple(range(2, ndim)) + (1,)
    channels_last = case.layout == CHANNELS_LAST

    def tensor(array: np.ndarray, logical: bool = False):
        t = torch.from_numpy(array).to(device)
        return t.permute(to_logical) if logical and channels_last else t

    def host(t) -> np.ndarray:
        t = t.detach()
        if channels_last and t.dim() == ndim:
            t = t.permute(to_storage)
        return t.cpu().numpy().copy()

    x, grad_output = tensor(data.x, logical=True), tensor(data.grad_output, logical=True)
    weight, bias = tensor(data.weight), tensor(data.bias)
    running_mean, running_var = tensor(data.running_mean.copy()), tensor(data.running_var.copy())
    functional = torch.nn.functional

    def collect(result):
        return {name: host(value) for name, value in result.items()}

    if case.operation not in OPERATIONS:
        residual = None if data.residual is None else tensor(data.residual, logical=True)
        tensors = _TorchTensors(x, grad_output, residual, weight, bias, running_mean, running_var)
        return Prepared(_torch_extra_run(case, tensors), collect)

    if case.operation == "train_forward":
        def run():
            y = functional.batch_norm(x, running_mean, running_var, weight, bias,
                                      training=True, momentum=MOMENTUM, eps=EPS)
            return {"y": y, "running_mean": running_mean, "running_var": running_var}
    elif case.operation == "eval_forward":
        def run():
            return {"y": functional.batch_norm(x, running_mean, running_var, weight, bias,
                                               training=False, momentum=MOMENTUM, eps=EPS)}
    else:
        _, save_mean, save_invstd = torch.native_batch_norm(
            x, weight, bias, running_mean.clone(), running_var.clone(), True, MOMENTUM, EPS
        )
        backward = torch.ops.aten.native_batch_norm_backward

        def run():
            grad_input, grad_weight, grad_bias = backward(
                grad_output, x, weight, running_mean, running_var, save_mean, save_invstd,
                True, EPS, [True, True, True],
            )
            return {"grad_input": grad_input, "grad_weight": grad_weight, "grad_bias": grad_bias}

    def run_without_grad():
        with torch.no_grad():
            return run()

    return Prepared(run_without_grad, collect)


@dataclass(frozen=True)
class _TorchTensors:
    """A case's tensors in logical ``(N, C, ...)`` order, on the implementation's device."""

    x: Any
    grad_output: Any
    residual: Any  # None for the operations without one
    weight: Any
    bias: Any
    running_mean: Any
    running_var: Any


def _torch_extra_run(case: Case, t: _TorchTensors) -> Callable[[], dict[str, Any]]:
    """PyTorch's fastest eager form of an operation of :data:`~.cases.EXTRA_OPERATIONS`.

    ``torch.relu(F.batch_norm(x) + z)`` allocates two more input-sized
    tensors than needed, which made the forwards 3x (training) to 10x
    (evaluation) slower on (32, 64, 56, 56) on a 2-core machine; they
    therefore add and clamp in place on the batch norm's output, as
    torchvision's ResNet blocks do (``out += identity``, ``ReLU(inplace=True)``).
    The backward differentiates the out-of-place expression (autograd's
    graph is the same either way).
    """
    import torch

    functional = torch.nn.functional
    if case.operation == "train_backward_add_relu":
        return _torch_autograd_backward(t)
    if case.operation == "train_forward_add_relu":
        def run():
            y = functional.batch_norm(t.x, t.running_mean, t.running_var, t.weight, t.bias,
                                      training=True, momentum=MOMENTUM, eps=EPS)
            return {"y": y.add_(t.residual).relu_(), "running_mean": t.running_mean,
                    "running_var": t.running_var}
    elif case.operation == "eval_out_add_relu":
        # numba_bn writes into a buffer it is given: here PyTorch does too, with the
        # out= variant of the aten op behind F.batch_norm (it keeps the buffer's strides).
        out = torch.empty_like(t.x)
        # Evaluation saves no statistics; these stay empty (in the parameters' dtype, as for float16 data).
        unused_mean, unused_invstd = t.weight.new_empty(0), t.weight.new_empty(0)
        batch_norm_into = torch.ops.aten.native_batch_norm.out

        def run():
            batch_norm_into(t.x, t.weight, t.bias, t.running_mean, t.running_var, False, MOMENTUM, EPS,
                            out=out, save_mean=unused_mean, save_invstd=unused_invstd)
            return {"y": out.add_(t.residual).relu_()}
    else:  # eval_out: F.batch_norm, which allocates its output (the out= variant timed the same here)
        def run():
            return {"y": functional.batch_norm(t.x, t.running_mean, t.running_var, t.weight, t.bias,
                                               training=False, momentum=MOMENTUM, eps=EPS)}

    def run_without_grad():
        with torch.no_grad():
            return run()

    return run_without_grad


def _torch_autograd_backward(t: _TorchTensors) -> Callable[[], dict[str, Any]]:
    """Autograd's backward of ``relu(batch_norm(x) + z)`` (training mode), the graph built once.

    The forward runs here, outside the timed region; each timed call
    differentiates the same graph again (``retain_graph=True`` keeps what
    the forward saved), through ReLU, the add and the batch norm.
    """
    import torch

    leaves = tuple(tensor.detach().requires_grad_() for tensor in (t.x, t.residual, t.weight, t.bias))
    x, residual, weight, bias = leaves
    y = torch.relu(torch.nn.functional.batch_norm(
        x, t.running_mean.clone(), t.running_var.clone(), weight, bias,
        training=True, momentum=MOMENTUM, eps=EPS,
    ) + residual)

    def run():
        grad_input, grad_residual, grad_weight, grad_bias = torch.autograd.grad(
            y, leaves, t.grad_output, retain_graph=True)
        return {"grad_input": grad_input, "grad_residual": grad_residual,
                "grad_weight": grad_weight, "grad_bias": grad_bias}

    return run


def _prepare_torch_cuda(case: Case, data: CaseData) -> Prepared:
    return _prepare_torch(case, data, device="cuda")


# ----------------------------------------------------------------------- JAX


def _prepare_jax(case: Case, data: CaseData) -> Prepared:
    """``jax.jit`` of PyTorch's formulas on JAX's CPU device (see :mod:`.jax_batchnorm`).

    The arrays are placed on the device and the program compiled (by a
    first call) here, untimed. JAX dispatches asynchronously: each timed call
    waits until its results are computed (``block_until_ready``). A
    channels-last case hands JAX the stored ``(N, ..., C)`` array, reduced
    over all axes but the last. The training forward returns its updated
    running buffers (JAX arrays are immutable); each call starts from the
    case's buffers, the same work as an update in place.
    """
    if not (case.operation in _JAX_OPERATIONS and case.dtype in _JAX_DTYPES):
        raise ValueError(f"expected an operation in {list(_JAX_OPERATIONS)} and a dtype in {list(_JAX_DTYPES)} "
                         f"for JAX, got {case.operation!r} in {case.dtype}")
    import jax

    from . import jax_batchnorm

    device = jax.devices("cpu")[0]  # the CPU peer even where a GPU build of jaxlib is installed

    def put(array):
        return None if array is None else jax.device_put(array, device)

    x, grad_output, residual = put(data.x), put(data.grad_output), put(data.residual)
    weight, bias = put(data.weight), put(data.bias)
    running_mean, running_var = put(data.running_mean), put(data.running_var)
    axes = _reduce_axes(case)

    if case.operation in ("train_forward", "train_forward_add_relu"):
        def compute():  # residual is None for the plain forward
            y, new_mean, new_var = jax_batchnorm.train_forward(
                x, weight, bias, running_mean, running_var, residual, axes=axes, eps=EPS, momentum=MOMENTUM)
            return {"y": y, "running_mean": new_mean, "running_var": new_var}
    elif case.operation == "eval_forward":
        def compute():
            return {"y": jax_batchnorm.eval_forward(x, weight, bias, running_mean, running_var,
                                                    axes=axes, eps=EPS)}
    else:  # train_backward, train_backward_add_relu
        # What the forward saves for its backward, as PyTorch's native_batch_norm does (and, for the
        # ReLU's mask, its output, as autograd keeps it).
        mean, invstd = jax_batchnorm.saved_statistics(x, axes=axes, eps=EPS)
        if case.operation == "train_backward_add_relu":
            y = jax_batchnorm.train_forward(x, weight, bias, running_mean, running_var, residual,
                                            axes=axes, eps=EPS, momentum=MOMENTUM)[0]

            def compute():
                grads = jax_batchnorm.train_backward_add_relu(grad_output, y, x, mean, invstd, weight, axes=axes)
                return dict(zip(OUTPUTS[case.operation], grads))
        else:
            def compute():
                grads = jax_batchnorm.train_backward(grad_output, x, mean, invstd, weight, axes=axes)
                return dict(zip(OUTPUTS[case.operation], grads))

    def run():
        return jax.block_until_ready(compute())

    run()  # compiles the program for these shapes, dtypes and axes
    return Prepared(run, _collect_host_arrays)


# ------------------------------------------------------------------ roofline


def _prepare_copy(case: Case, data: CaseData) -> Prepared:
    """A parallel copy of an array of the input's size: reads and writes it once.

    The same copy serves every operation; the report scales its time by the
    operation's least traffic (``report.MIN_ARRAYS``).
    """
    from .parallel_copy import parallel_copy

    x = data.x
    out = np.empty_like(x)

    def run():
        parallel_copy(x, out)

    return Prepared(run, lambda result: {})


def _prepare_copy_cuda(case: Case, data: CaseData) -> Prepared:
    """A device-to-device copy of an array of the input's size."""
    from ..cuda.numba_cuda import cuda

    x = cuda.to_device(data.x)
    out = cuda.device_array_like(x)

    def run():
        out.copy_to_device(x)

    return Prepared(run, lambda result: {})


_TORCH_CPU_INSTALL = (
    "To compare with it: pip install torch==2.13.0 (or, for the CPU-only wheel on any machine: "
    "pip install torch --index-url https://download.pytorch.org/whl/cpu)."
)
_JAX_INSTALL = 'To compare with it: pip install "jax[cpu]==0.10.2".'
#: JAX has no out= (its arrays are immutable): the plain operations and the fused training ones.
_JAX_OPERATIONS = OPERATIONS + ("train_forward_add_relu", "train_backward_add_relu")
#: JAX computes in float32 by default; float64 would need its process-wide jax_enable_x64 switch.
_JAX_DTYPES = ("float32", "float16")
_JAX_DTYPES_HINT = "JAX computes in float32 unless its process-wide jax_enable_x64 switch is on."
_TORCH_CUDA_INSTALL = "To compare with it: pip install torch (PyPI's Linux wheels are CUDA builds)."
_TORCH_CUDA_UNUSABLE = (
    "PyTorch is installed but torch.cuda.is_available() is False (a CPU-only build, or no GPU it can use). "
    "To compare with it: install a CUDA build of PyTorch "
    "(PyPI's Linux wheels are: pip install --force-reinstall torch)."
)

#: Every implementation, by device and name, in the order tables show them.
IMPLEMENTATIONS: Mapping[str, Mapping[str, Implementation]] = {
    "cpu": {
        OURS: Implementation(OURS, "cpu", "numba_bn modules (Numba @njit(parallel=True) kernels)",
                             _prepare_numba_bn, operations=ALL_OPERATIONS),
        "torch": Implementation("torch", "cpu", "PyTorch CPU: F.batch_norm / aten.native_batch_norm_backward "
                                "(fused: in-place add_/relu_, autograd's backward)",
                                _prepare_torch, requires=("torch",), install_hint=_TORCH_CPU_INSTALL,
                                operations=ALL_OPERATIONS),
        "jax": Implementation("jax", "cpu", "JAX CPU: jax.jit of the same formulas, closed-form backward, "
                              "float32 arithmetic", _prepare_jax, requires=("jax",), install_hint=_JAX_INSTALL,
                              operations=_JAX_OPERATIONS, dtypes=_JAX_DTYPES, dtypes_hint=_JAX_DTYPES_HINT),
        "numpy": Implementation("numpy", "cpu", "plain vectorised NumPy", _prepare_numpy),
        ROOFLINE: Implementation(ROOFLINE, "cpu", "parallel copy of an array of the input's size (roofline)",
                                 _prepare_copy, operations=ALL_OPERATIONS),
    },
    "cuda": {
        OURS: Implementation(OURS, "cuda", "numba_bn modules with device='cuda' (numba.cuda kernels)",
                             _prepare_numba_bn_cuda, usable=cuda_available),
        "torch": Implementation("torch", "cuda", "PyTorch CUDA: F.batch_norm / aten.native_batch_norm_backward",
                                _prepare_torch_cuda, requires=("torch",),
                                usable=lambda: cuda_available() and torch_cuda_available(),
                                install_hint=_TORCH_CUDA_INSTALL, unusable_hint=_TORCH_CUDA_UNUSABLE),
        ROOFLINE: Implementation(ROOFLINE, "cuda", "device-to-device copy of an array of the input's size",
                                 _prepare_copy_cuda, usable=cuda_available),
    },
}

DEVICES: tuple[str, ...] = tuple(IMPLEMENTATIONS)


def implementations(device: str = "cpu", available_only: bool = True) -> list[Implementation]:
    """The implementations for ``device``, in table order.

    Parameters
    ----------
    device : {"cpu", "cuda"}
    available_only : bool
        Leave out those whose packages are missing or whose device is unusable.

    Returns
    -------
    list of Implementation
        numba_bn first, the copy roofline last.

    Raises
    ------
    ValueError
        For an unknown device.
    """
    if device not in IMPLEMENTATIONS:
        raise ValueError(f"expected device in {list(DEVICES)}, got {device!r}")
    table = IMPLEMENTATIONS[device].values()
    return [impl for impl in table if impl.is_available() or not available_only]


def unavailable(device: str = "cpu") -> list[Implementation]:
    """The implementations for ``device`` that cannot run here (see :meth:`Implementation.unavailable_reason`).

    Parameters
    ----------
    device : {"cpu", "cuda"}

    Returns
    -------
    list of Implementation
        In table order; empty when everything can run.
    """
    return [impl for impl in implementations(device, available_only=False) if not impl.is_available()]
