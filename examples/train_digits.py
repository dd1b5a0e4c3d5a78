"""Train a small MLP and a small CNN on scikit-learn's digits, with and without BatchNorm.

Everything is NumPy: the layers' forward passes, their hand-written backward
passes and plain SGD. The BatchNorm layers are numba_bn modules
(``BatchNorm1d`` after each hidden ``Linear``, ``BatchNorm2d`` after each
convolution), so this is what using numba_bn in a NumPy training loop looks
like. As in the BatchNorm paper's MNIST experiment, the MLP uses sigmoid
units, where normalising the pre-activations speeds training up the most.

The convolutions keep images channels-last, ``(N, H, W, C)``: the im2col
product of a convolution comes out that way, and ``BatchNorm2d(C,
channel_axis=-1)`` normalises it in place, with no transpose.

Run ``python examples/train_digits.py --help`` for the options; needs
scikit-learn (for the data set, which ships inside the package) and
optionally matplotlib (for the plot of the loss curves).
"""

from __future__ import annotations

import abc
import argparse
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import numba_bn as nbn

DTYPE = np.float32


# ------------------------------------------------------------------- layers

Parameter = Tuple[object, str, str]  # (owner, parameter attribute, gradient attribute)


class Layer(abc.ABC):
    """A layer: ``forward`` caches what ``backward`` needs; ``parameters`` lists what SGD updates."""

    @abc.abstractmethod
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The layer's output for a batch ``x``."""

    @abc.abstractmethod
    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. the last forward's input; sets the parameters' gradients."""

    def parameters(self) -> List[Parameter]:
        """``(owner, name, gradient name)`` of each trainable array (none by default)."""
        return []


class Linear(Layer):
    """``y = x @ weight + bias``; ``bias=False`` when a BatchNorm follows (its shift replaces it)."""

    def __init__(self, fan_in: int, fan_out: int, rng: np.random.Generator, bias: bool = True) -> None:
        self.weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(DTYPE)
        self.bias = np.zeros(fan_out, DTYPE) if bias else None
        self.grad_weight = self.grad_bias = None
        self._x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        y = x @ self.weight
        return y if self.bias is None else y + self.bias

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        self.grad_weight = self._x.T @ grad_output
        if self.bias is not None:
            self.grad_bias = grad_output.sum(axis=0)
        return grad_output @ self.weight.T

    def parameters(self) -> List[Parameter]:
        return [(self, "weight", "grad_weight")] + ([(self, "bias", "grad_bias")] if self.bias is not None else [])


class Conv2d(Layer):
    """3x3 convolution, stride 1, zero padding 1, on channels-last images, by im2col."""

    def __init__(self, in_channels: int, out_channels: int, rng: np.random.Generator, size: int = 3) -> None:
        fan_in = in_channels * size * size
        self.size = size
        self.weight = (rng.standard_normal((fan_in, out_channels)) * np.sqrt(2.0 / fan_in)).astype(DTYPE)
        self.grad_weight = None
        self._columns = None
        self._input_shape = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        pad = self.size // 2
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        # (N, H, W, C, k, k): every k x k window, as a view; the reshape copies it once.
        windows = sliding_window_view(padded, (self.size, self.size), axis=(1, 2))
        self._columns = windows.reshape(n * h * w, c * self.size * self.size)
        self._input_shape = x.shape
        return (self._columns @ self.weight).reshape(n, h, w, -1)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        n, h, w, c = self._input_shape
        grad_output = grad_output.reshape(n * h * w, -1)
        self.grad_weight = self._columns.T @ grad_output
        grad_columns = (grad_output @ self.weight.T).reshape(n, h, w, c, self.size, self.size)
        pad = self.size // 2
        grad_padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), DTYPE)
        for i in range(self.size):  # each window offset adds back into the input it read
            for j in range(self.size):
                grad_padded[:, i:i + h, j:j + w, :] += grad_columns[..., i, j]
        return grad_padded[:, pad:pad + h, pad:pad + w, :]

    def parameters(self) -> List[Parameter]:
        return [(self, "weight", "grad_weight")]


class BatchNorm(Layer):
    """A numba_bn module as a layer: ``train``/``eval`` follow the model's mode."""

    def __init__(self, module) -> None:
        self.module = module

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.module(x)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return self.module.backward(np.ascontiguousarray(grad_output))

    def parameters(self) -> List[Parameter]:
        return [(self.module, "weight", "grad_weight"), (self.module, "bias", "grad_bias")]


class Sigmoid(Layer):
    """The logistic function, elementwise."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = 1.0 / (1.0 + np.exp(-x))
        return self._y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return grad_output * self._y * (1.0 - self._y)


class ReLU(Layer):
    """``max(x, 0)``, elementwise."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return x * self._mask

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return grad_output * self._mask


class AvgPool2(Layer):
    """2x2 average pooling on channels-last images."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(grad_output, 2, axis=1), 2, axis=2) / DTYPE(4)


class Flatten(Layer):
    """``(N, ...)`` to ``(N, features)``."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return grad_output.reshape(self._shape)


class Model:
    """A stack of layers with a softmax cross-entropy loss."""

    def __init__(self, layers: List[Layer]) -> None:
        self.layers = layers

    def train(self, mode: bool = True) -> "Model":
        """Training mode (batch statistics) or, with ``mode=False``, evaluation mode."""
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.module.train(mode)
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The network's output before the softmax."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def loss_and_backward(self, x: np.ndarray, labels: np.ndarray, batch_size: int | None = None) -> float:
        """Cross-entropy of a batch, summed and divided by ``batch_size`` (default: the batch's own size,
        the mean); leaves every parameter's gradient set."""
        batch_size = len(labels) if batch_size is None else batch_size
        logits = self.logits(x)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(len(labels)), labels].sum() / batch_size
        grad = np.exp(log_probs)
        grad[np.arange(len(labels)), labels] -= 1
        grad /= batch_size
        for layer in reversed(self.layers):
            grad = layer.backward(grad.astype(DTYPE, copy=False))
        return float(loss)

    def sgd_step(self, learning_rate: float) -> None:
        """``parameter -= learning_rate * gradient`` for every parameter, in place."""
        for layer in self.layers:
            for owner, name, grad_name in layer.parameters():
                getattr(owner, name)[...] -= learning_rate * getattr(owner, grad_name)

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of correct predictions, in evaluation mode."""
        self.train(False)
        accuracy = float((self.logits(x).argmax(axis=1) == labels).mean())
        self.train(True)
        return accuracy


# ------------------------------------------------------------------- models


def mlp(batch_norm: bool, rng: np.random.Generator, hidden: int = 100) -> Model:
    """64 -> 100 -> 100 -> 100 -> 10 with sigmoid units (the paper's MNIST network, smaller)."""
    layers, width = [], 64
    for _ in range(3):
        layers.append(Linear(width, hidden, rng, bias=not batch_norm))
        if batch_norm:
            layers.append(BatchNorm(nbn.BatchNorm1d(hidden)))
        layers.append(Sigmoid())
        width = hidden
    layers.append(Linear(width, 10, rng))
    return Model(layers)


def cnn(batch_norm: bool, rng: np.random.Generator) -> Model:
    """conv 8 -> pool -> conv 16 -> flatten -> linear 10, ReLU units, channels-last."""
    layers = []
    for in_channels, out_channels in ((1, 8), (8, 16)):
        layers.append(Conv2d(in_channels, out_channels, rng))
        if batch_norm:
            layers.append(BatchNorm(nbn.BatchNorm2d(out_channels, channel_axis=-1)))
        layers.append(ReLU())
        if in_channels == 1:
            layers.append(AvgPool2())
    layers += [Flatten(), Linear(4 * 4 * 16, 10, rng)]
    return Model(layers)


MODELS = {"mlp": mlp, "cnn": cnn}


# ----------------------------------------------------------------- training


def load_digits_split(seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits scaled to [0, 1], split 80/20 into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn for its digits data set: pip install scikit-learn")
    digits = load_digits()
    images = (digits.images / 16.0).astype(DTYPE)
    labels = digits.target
    order = np.random.default_rng(seed).permutation(len(labels))
    split = int(0.8 * len(labels))
    return images[order[:split]], labels[order[:split]], images[order[split:]], labels[order[split:]]


def model_input(name: str, images: np.ndarray) -> np.ndarray:
    """Flat vectors for the MLP, ``(N, 8, 8, 1)`` channels-last images for the CNN."""
    return images.reshape(len(images), -1) if name == "mlp" else images[..., None]


def train(name: str, batch_norm: bool, data: Tuple[np.ndarray, ...], epochs: int, batch_size: int,
          learning_rate: float, seed: int) -> dict:
    """Train one model; returns its per-step losses, per-epoch test accuracies and the time taken."""
    train_images, train_labels, test_images, test_labels = data
    rng = np.random.default_rng(seed)
    model = MODELS[name](batch_norm, rng)
    x_train, x_test = model_input(name, train_images), model_input(name, test_images)
    losses, accuracies = [], []
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(train_labels))
        # Drop the last partial batch: every step sees the same number of examples.
        for first in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[first:first + batch_size]
            losses.append(model.loss_and_backward(x_train[batch], train_labels[batch]))
            model.sgd_step(learning_rate)
        accuracies.append(model.accuracy(x_test, test_labels))
    return {"losses": np.array(losses), "test_accuracy": np.array(accuracies),
            "seconds": time.perf_counter() - start}


def save_plot(results: dict, path: str) -> bool:
    """Loss curves per model, with and without BatchNorm; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(dict.fromkeys(name for name, _ in results))
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False,
                                constrained_layout=True)
    for axis, name in zip(axes[0], names):
        for batch_norm in (False, True):
            losses = results[name, batch_norm]["losses"]
            window = max(1, len(losses) // 50)
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            axis.plot(smooth, label="with BatchNorm" if batch_norm else "without BatchNorm")
        axis.set_title(f"{name.upper()} on digits")
        axis.set_xlabel("SGD step")
        axis.set_ylabel("training loss")
        axis.set_yscale("log")
        axis.legend()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


#: The loss curves go next to the example, not into whatever folder it is run from.
DEFAULT_PLOT = Path(__file__).resolve().with_suffix(".png")


def build_parser() -> argparse.ArgumentParser:
    """The example's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per SGD step (default 32)")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated subset of mlp,cnn")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and shuffling")
    parser.add_argument("--plot", default=str(DEFAULT_PLOT),
                        help="where to save the loss curves (PNG; default train_digits.png next to this script)")
    parser.add_argument("--no-plot", action="store_true", help="do not save a plot")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Train every chosen model with and without BatchNorm; returns ``{(model, batch_norm): result}``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if not names or any(name not in MODELS for name in names):
        parser.error(f"--models expects a comma-separated subset of {','.join(MODELS)}, got {args.models!r}")
    if args.epochs < 1 or args.batch_size < 2:
        parser.error("--epochs must be >= 1 and --batch-size >= 2 (BatchNorm needs 2+ values per channel)")
    data = load_digits_split(args.seed)
    print(f"digits: {len(data[1])} training and {len(data[3])} test images of 8x8 pixels, 10 classes")
    results = {}
    for name in names:
        for batch_norm in (False, True):
            # The same seed: both variants start from the same weights and see the same batches.
            result = train(name, batch_norm, data, args.epochs, args.batch_size, args.lr, args.seed)
            results[name, batch_norm] = result
            steps = len(result["losses"])
            last = result["losses"][-max(1, steps // 10):].mean()
            print(f"{name.upper():3} {'with' if batch_norm else 'without':>7} BatchNorm: "
                  f"loss {result['losses'][:max(1, steps // 10)].mean():.3f} -> {last:.3f} "
                  f"(mean of first/last 10% of {steps} steps), "
                  f"test accuracy {100 * result['test_accuracy'][-1]:.1f}%, {result['seconds']:.1f} s")
    if not args.no_plot:
        if save_plot(results, args.plot):
            print(f"saved the loss curves to {args.plot}")
        else:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
