"""A small ResNet in NumPy whose BatchNorms are numba_bn modules, trained on scikit-learn's digits.

The network is a stem convolution followed by BatchNorm and ReLU, two basic
residual blocks (conv -> BN+ReLU -> conv -> BN, plus the block's input, ->
ReLU), a global average pool and a linear classifier, trained with softmax
cross-entropy and plain SGD on the 8x8 digits as ``(N, 1, 8, 8)`` images.
Everything but the BatchNorms is NumPy, forward and backward written by hand:
the 3x3 convolutions (stride 1, zero padding 1) are matrix products of the
kernels with the windows of the padded input (im2col).

Each "BN+ReLU" is one numba_bn module built with ``activation="relu"``. The
block's second one also takes the block's input: ``bn2(conv2(h),
residual=x)`` computes ``relu(bn2(conv2(h)) + x)`` in one pass over the
data, and its ``backward(dy)`` returns the gradients of both inputs,
``(grad_input, grad_residual)``.

After training, the network switches to evaluation mode and every BatchNorm
is folded into the convolution before it with ``nbn.fold_batchnorm``; the
folded network (convolutions with a bias, then NumPy's ReLU and add) must
give the unfolded network's logits. With ``--check`` the same network is
built in PyTorch and takes every step alongside, from the same weights on
the same batch: the losses, the updated weights and running statistics, and
in the end the evaluation-mode logits are compared (see ``TorchComparison``).

Run ``python examples/resnet_block_numpy.py --help`` for the options; needs
scikit-learn (for the digits) and, for ``--check``, PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import time
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import numba_bn as nbn

DTYPE = np.float32
CLASSES = 10
#: float32 agreement asked of the folded network and of PyTorch: differences are
#: rounding (another summation order) carried through a few layers and SGD steps.
RELATIVE_TOLERANCE = 1e-4

Parameter = Tuple[object, str, str]  # (owner, parameter attribute, gradient attribute)


# ------------------------------------------------------------------- layers


def im2col(x: np.ndarray) -> np.ndarray:
    """The 3x3 windows of ``(N, C, H, W)`` images padded by 1: an ``(N*H*W, C*9)`` matrix, one window a row."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # (N, C, H, W, 3, 3), a view
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)  # the one copy


def correlate3x3(x: np.ndarray, weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """3x3 cross-correlation, stride 1, zero padding 1, as PyTorch's ``conv2d``.

    Returns the ``(N, O, H, W)`` output of ``(N, C, H, W)`` images and
    ``(O, C, 3, 3)`` kernels, and the im2col matrix of the input, which the
    kernels' gradient needs. The output is a view of the ``(N*H*W, O)``
    product, channels last in memory: numba_bn reads any strides in place.
    """
    n, _, h, w = x.shape
    columns = im2col(x)
    y = columns @ weight.reshape(len(weight), -1).T  # (N*H*W, O)
    return y.reshape(n, h, w, -1).transpose(0, 3, 1, 2), columns


class Conv3x3:
    """A 3x3 convolution with ``(out, in, 3, 3)`` kernels (PyTorch's layout) and an optional bias."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.grad_weight = None
        self._columns = None

    @classmethod
    def he_initialised(cls, in_channels: int, out_channels: int, rng: np.random.Generator) -> "Conv3x3":
        """Random kernels scaled for ReLU units; no bias, since a BatchNorm's shift follows."""
        scale = np.sqrt(2.0 / (in_channels * 9))
        return cls((rng.standard_normal((out_channels, in_channels, 3, 3)) * scale).astype(DTYPE))

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, self._columns = correlate3x3(x, self.weight)
        return y if self.bias is None else y + self.bias[:, None, None]

    def backward(self, grad_output: np.ndarray, input_gradient: bool = True) -> np.ndarray | None:
        """Sets ``grad_weight``; returns the input's gradient (None with ``input_gradient=False``)."""
        rows = grad_output.transpose(0, 2, 3, 1).reshape(-1, len(self.weight))  # (N*H*W, O), as the product's
        self.grad_weight = (rows.T @ self._columns).reshape(self.weight.shape)
        if not input_gradient:
            return None
        # A same-padded 3x3 correlation's input gradient is the correlation of the
        # output gradient with the kernels flipped and their in/out axes swapped.
        flipped = self.weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        return correlate3x3(grad_output, flipped)[0]


class BasicBlock:
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``, ResNet's basic block with an identity shortcut."""

    def __init__(self, channels: int, rng: np.random.Generator) -> None:
        self.conv1 = Conv3x3.he_initialised(channels, channels, rng)
        self.conv2 = Conv3x3.he_initialised(channels, channels, rng)
        self.bn1 = nbn.BatchNorm2d(channels, activation="relu")
        self.bn2 = nbn.BatchNorm2d(channels, activation="relu")

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = self.bn1(self.conv1.forward(x))                   # relu(bn1(conv1(x)))
        return self.bn2(self.conv2.forward(h), residual=x)    # relu(bn2(conv2(h)) + x), one pass

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad_conv2, grad_identity = self.bn2.backward(grad_output)  # through the ReLU, the add and bn2
        grad_h = self.conv2.backward(grad_conv2)
        return self.conv1.backward(self.bn1.backward(grad_h)) + grad_identity

    def parameters(self) -> List[Parameter]:
        return [(self.conv1, "weight", "grad_weight"), (self.conv2, "weight", "grad_weight"),
                *batchnorm_parameters(self.bn1), *batchnorm_parameters(self.bn2)]


def batchnorm_parameters(bn) -> List[Parameter]:
    return [(bn, "weight", "grad_weight"), (bn, "bias", "grad_bias")]


class ResNet:
    """stem conv -> BN+ReLU -> two basic blocks -> global average pool -> linear, on ``(N, 1, 8, 8)`` images."""

    def __init__(self, channels: int, rng: np.random.Generator) -> None:
        self.stem = Conv3x3.he_initialised(1, channels, rng)
        self.stem_bn = nbn.BatchNorm2d(channels, activation="relu")
        self.blocks = [BasicBlock(channels, rng), BasicBlock(channels, rng)]
        self.fc_weight = (rng.standard_normal((CLASSES, channels)) / np.sqrt(channels)).astype(DTYPE)
        self.fc_bias = np.zeros(CLASSES, DTYPE)
        self.grad_fc_weight = self.grad_fc_bias = None
        self._features = self._pooled_shape = None

    def batchnorms(self) -> list:
        return [self.stem_bn] + [bn for block in self.blocks for bn in (block.bn1, block.bn2)]

    def train(self, mode: bool = True) -> "ResNet":
        """Training mode (batch statistics) or, with ``mode=False``, evaluation mode."""
        for bn in self.batchnorms():
            bn.train(mode)
        return self

    def logits(self, images: np.ndarray) -> np.ndarray:
        h = self.stem_bn(self.stem.forward(images))
        for block in self.blocks:
            h = block.forward(h)
        self._pooled_shape = h.shape
        self._features = h.mean(axis=(2, 3))
        return self._features @ self.fc_weight.T + self.fc_bias

    def backward(self, grad_logits: np.ndarray) -> None:
        """Sets every parameter's gradient (the images need none)."""
        self.grad_fc_weight = grad_logits.T @ self._features
        self.grad_fc_bias = grad_logits.sum(axis=0)
        height, width = self._pooled_shape[2:]
        grad_features = (grad_logits @ self.fc_weight) / DTYPE(height * width)
        # The pool spreads each gradient evenly: a read-only view with zero strides, which
        # numba_bn's backward reads in place like any other array.
        grad = np.broadcast_to(grad_features[:, :, None, None], self._pooled_shape)
        for block in reversed(self.blocks):
            grad = block.backward(grad)
        self.stem.backward(self.stem_bn.backward(grad), input_gradient=False)

    def parameters(self) -> List[Parameter]:
        return ([(self.stem, "weight", "grad_weight"), *batchnorm_parameters(self.stem_bn)]
                + [parameter for block in self.blocks for parameter in block.parameters()]
                + [(self, "fc_weight", "grad_fc_weight"), (self, "fc_bias", "grad_fc_bias")])

    def sgd_step(self, learning_rate: float) -> None:
        for owner, name, grad_name in self.parameters():
            getattr(owner, name)[...] -= learning_rate * getattr(owner, grad_name)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


class FoldedResNet:
    """The evaluation-mode network with every BatchNorm folded into its convolution.

    What is left of a BatchNorm is its convolution's new weight and bias; the
    ReLUs and the residual adds are NumPy operations.
    """

    def __init__(self, model: ResNet) -> None:
        def folded(conv: Conv3x3, bn) -> Conv3x3:
            return Conv3x3(*nbn.fold_batchnorm(conv.weight, conv.bias, bn))

        self.stem = folded(model.stem, model.stem_bn)
        self.blocks = [(folded(block.conv1, block.bn1), folded(block.conv2, block.bn2)) for block in model.blocks]
        self.fc_weight, self.fc_bias = model.fc_weight, model.fc_bias

    def logits(self, images: np.ndarray) -> np.ndarray:
        h = relu(self.stem.forward(images))
        for conv1, conv2 in self.blocks:
            h = relu(conv2.forward(relu(conv1.forward(h))) + h)
        return h.mean(axis=(2, 3)) @ self.fc_weight.T + self.fc_bias


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray]:
    """The batch's mean cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return float(-log_probs[rows, labels].mean()), (grad / len(labels)).astype(DTYPE)


# ------------------------------------------------------------------ PyTorch


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def torch_twin(channels: int):
    """The same network in PyTorch (``torch.nn``), float32, with its own random weights."""
    import torch
    from torch import nn

    class TorchBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + x)

    class TorchResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(channels)
            self.blocks = nn.Sequential(TorchBlock(), TorchBlock())
            self.fc = nn.Linear(channels, CLASSES)

        def forward(self, images):
            h = self.blocks(torch.relu(self.stem_bn(self.stem(images))))
            return self.fc(h.mean(dim=(2, 3)))

    return TorchResNet()


def paired_arrays(model: ResNet, twin) -> List[Tuple[str, np.ndarray, object]]:
    """``(name, array, tensor)`` for every weight and running statistic of ``model`` and its twin."""
    pairs = [("stem.weight", model.stem.weight, twin.stem.weight)]
    batchnorms = [("stem_bn", model.stem_bn, twin.stem_bn)]
    for index, (block, twin_block) in enumerate(zip(model.blocks, twin.blocks)):
        pairs += [(f"blocks.{index}.conv1.weight", block.conv1.weight, twin_block.conv1.weight),
                  (f"blocks.{index}.conv2.weight", block.conv2.weight, twin_block.conv2.weight)]
        batchnorms += [(f"blocks.{index}.bn1", block.bn1, twin_block.bn1),
                       (f"blocks.{index}.bn2", block.bn2, twin_block.bn2)]
    for prefix, bn, twin_bn in batchnorms:
        pairs += [(f"{prefix}.{name}", getattr(bn, name), getattr(twin_bn, name))
                  for name in ("weight", "bias", "running_mean", "running_var")]
    return pairs + [("fc.weight", model.fc_weight, twin.fc.weight), ("fc.bias", model.fc_bias, twin.fc.bias)]


def copy_into_twin(model: ResNet, twin) -> None:
    """Give the twin ``model``'s weights and running statistics."""
    import torch

    with torch.no_grad():
        for _, array, tensor in paired_arrays(model, twin):
            tensor.copy_(torch.from_numpy(array))


def torch_sgd_step(twin, images: np.ndarray, labels: np.ndarray, learning_rate: float) -> float:
    """One training step of the PyTorch twin, as ``ResNet``'s; returns the loss."""
    import torch

    twin.train()
    loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(images)), torch.from_numpy(labels))
    twin.zero_grad()
    loss.backward()
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter -= learning_rate * parameter.grad
    return loss.item()


def largest_relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """``max |ours - theirs|`` over ``1 + max |theirs|``."""
    theirs = np.asarray(theirs, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max() / (1.0 + np.abs(theirs).max()))


class TorchComparison:
    """The PyTorch twin, stepped alongside ``ResNet`` from the same weights on the same batches.

    Before each step the twin gets the NumPy network's weights and running
    statistics; after both have taken the step, their losses, updated weights
    and running statistics are compared. Trained on its own from the same
    start, the twin would drift from the NumPy network by more than float32
    rounding: where a ReLU's input lies within rounding of 0, the two may
    pass a gradient value or not, and SGD amplifies such differences step
    after step.
    """

    def __init__(self, model: ResNet) -> None:
        self.model = model
        self.twin = torch_twin(model.stem.weight.shape[0])
        self.differences = {"losses": 0.0, "parameters": 0.0, "running_stats": 0.0}

    def start_step(self) -> None:
        """Before the NumPy network's step: give the twin its current weights and statistics."""
        copy_into_twin(self.model, self.twin)

    def finish_step(self, images: np.ndarray, labels: np.ndarray, learning_rate: float, loss: float) -> None:
        """After it: take the same step in PyTorch and compare the loss and what the step updated."""
        twin_loss = torch_sgd_step(self.twin, images, labels, learning_rate)
        self._note("losses", largest_relative_difference(np.array([loss]), np.array([twin_loss])))
        for name, array, tensor in paired_arrays(self.model, self.twin):
            kind = "running_stats" if "running" in name else "parameters"
            self._note(kind, largest_relative_difference(array, tensor.detach().numpy()))

    def evaluation_logits(self, images: np.ndarray) -> np.ndarray:
        """The twin's evaluation-mode logits, with the NumPy network's final weights and statistics."""
        import torch

        copy_into_twin(self.model, self.twin)
        self.twin.eval()
        with torch.no_grad():
            return self.twin(torch.from_numpy(images)).numpy()

    def _note(self, kind: str, difference: float) -> None:
        self.differences[kind] = max(self.differences[kind], difference)


# ----------------------------------------------------------------- training


def load_digits_split(seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` images in [0, 1], split 80/20 into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn for its digits data set: pip install scikit-learn")
    digits = load_digits()
    images = (digits.images / 16.0).astype(DTYPE)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    split = int(0.8 * len(labels))
    return images[order[:split]], labels[order[:split]], images[order[split:]], labels[order[split:]]


def batches(rng: np.random.Generator, examples: int, batch_size: int, steps: int) -> Iterator[np.ndarray]:
    """``steps`` batches of indices: a fresh shuffle each pass, the last partial batch of a pass dropped."""
    produced = 0
    while True:
        order = rng.permutation(examples)
        for first in range(0, examples - batch_size + 1, batch_size):
            if produced == steps:
                return
            produced += 1
            yield order[first:first + batch_size]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Matrix products on one thread, for as long as the context lasts.

    The products here are small: BLAS's threads would only compete with
    numba_bn's for the cores (on a 2-core machine they made training several
    times slower). threadpoolctl comes with scikit-learn; without it, nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def build_parser() -> argparse.ArgumentParser:
    """The example's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="SGD steps (default 60)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    parser.add_argument("--channels", type=int, default=16, help="channels of every convolution (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation, split and shuffling")
    parser.add_argument("--check", action="store_true",
                        help="train the same network in PyTorch alongside and compare (needs torch)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, fold and (with ``--check``) compare with PyTorch; returns the losses and the differences found."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2 or args.channels < 1:
        parser.error("--steps and --channels must be >= 1 and --batch-size >= 2 "
                     "(BatchNorm needs 2+ values per channel)")
    with one_blas_thread():
        return run(args)


def train_step(model: ResNet, images: np.ndarray, labels: np.ndarray, learning_rate: float) -> float:
    """One SGD step on a batch; returns the batch's loss."""
    loss, grad_logits = softmax_cross_entropy(model.logits(images), labels)
    model.backward(grad_logits)
    model.sgd_step(learning_rate)
    return loss


def check(name: str, difference: float) -> str:
    """``difference`` as text; exits with a message when it exceeds float32 rounding."""
    if difference >= RELATIVE_TOLERANCE:
        raise SystemExit(f"{name} differ by {difference:.1e} (relative), more than float32 rounding explains")
    return f"{difference:.1e}"


def run(args: argparse.Namespace) -> dict:
    """What ``main`` does once the options are checked."""
    train_images, train_labels, test_images, test_labels = load_digits_split(args.seed)
    rng = np.random.default_rng(args.seed)
    model = ResNet(args.channels, rng)
    comparison = TorchComparison(model) if args.check and torch_installed() else None

    losses = []
    start = time.perf_counter()
    for batch in batches(rng, len(train_labels), args.batch_size, args.steps):
        images, labels = train_images[batch], train_labels[batch]
        if comparison is not None:
            comparison.start_step()
        losses.append(train_step(model, images, labels, args.lr))
        if comparison is not None:
            comparison.finish_step(images, labels, args.lr, losses[-1])
    seconds = time.perf_counter() - start
    losses = np.array(losses)
    window = max(1, len(losses) // 10)
    print(f"ResNet ({args.channels} channels, 2 basic blocks) on {len(train_labels)} digits: "
          f"loss {losses[:window].mean():.3f} -> {losses[-window:].mean():.3f} "
          f"(first/last {window} of {len(losses)} steps, {seconds:.1f} s)")

    model.train(False)
    with nbn.no_grad():  # inference: the modules keep nothing for a backward
        logits = model.logits(test_images)
    folded_logits = FoldedResNet(model).logits(test_images)
    fold_difference = largest_relative_difference(folded_logits, logits)
    print(f"evaluation mode: test accuracy {100 * accuracy(logits, test_labels):.1f}%; with every BatchNorm "
          f"folded into its convolution {100 * accuracy(folded_logits, test_labels):.1f}%, logits within "
          f"{check('the folded logits', fold_difference)} (relative)")

    differences = None
    if comparison is not None:
        differences = dict(comparison.differences)
        differences["logits"] = largest_relative_difference(logits, comparison.evaluation_logits(test_images))
        print(f"PyTorch, each step from the same weights on the same batch: losses of all {len(losses)} steps "
              f"within {check('the losses', differences['losses'])}, updated weights within "
              f"{check('the updated weights', differences['parameters'])}, running statistics within "
              f"{check('the running statistics', differences['running_stats'])}, evaluation logits within "
              f"{check('the evaluation logits', differences['logits'])} (relative): they agree")
    elif args.check:
        print("PyTorch is not installed: the comparison with PyTorch was skipped (pip install torch)")
    return {"losses": losses, "test_accuracy": accuracy(logits, test_labels),
            "fold_difference": fold_difference, "torch_differences": differences}


if __name__ == "__main__":
    main()
