"""Run a PyTorch-trained network's BatchNorm layers in NumPy with numba_bn.

A small PyTorch model (a 1x1 convolution, ``BatchNorm2d``, pooling, a linear
layer, ``BatchNorm1d`` and a linear head) is trained for a few steps so its
running statistics are real, and its ``state_dict`` is saved to an ``.npz``
file, which is how parameters travel without PyTorch. The NumPy side loads
that file: the linear layers become matrix products and each BatchNorm
becomes a numba_bn module filled with ``load_state_dict``. The images are
fed channels-last, ``(N, H, W, C)`` as image pipelines store them, and the
``BatchNorm2d`` reads them with ``channel_axis=-1``: no transpose.

With PyTorch installed the NumPy outputs are compared with PyTorch's on the
same images. Without it, the example uses ``examples/data/bn_model.npz`` (made
by ``python examples/pytorch_inference.py --export examples/data/bn_model.npz``),
which also holds sample images and PyTorch's outputs for them.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path
from typing import Mapping, Sequence, TypeVar

import numpy as np

import numba_bn as nbn

ModuleT = TypeVar("ModuleT", nbn.BatchNorm1d, nbn.BatchNorm2d, nbn.BatchNorm3d)
SHIPPED = Path(__file__).resolve().parent / "data" / "bn_model.npz"
CHANNELS, FEATURES, CLASSES = 8, 16, 4
#: Keys of the sample stored beside the parameters in an exported file.
SAMPLE_INPUT, SAMPLE_OUTPUT = "sample.images_nhwc", "sample.torch_output"


# ------------------------------------------------------------- PyTorch side


def torch_model(seed: int = 0) -> "torch.nn.Sequential":
    """The PyTorch network, trained for a few steps on random data (so running stats move)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, CHANNELS, kernel_size=1, bias=False))
    model.add_module("bn2d", nn.BatchNorm2d(CHANNELS))
    model.add_module("relu1", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(CHANNELS, FEATURES, bias=False))
    model.add_module("bn1d", nn.BatchNorm1d(FEATURES))
    model.add_module("relu2", nn.ReLU())
    model.add_module("head", nn.Linear(FEATURES, CLASSES))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(20):
        images = torch.randn(16, 3, 8, 8) * 2 + 1
        labels = torch.randint(0, CLASSES, (16,))
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    return model.eval()


def export(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Train the PyTorch model, save its state_dict plus a sample and its outputs to ``path``."""
    import torch

    model = torch_model(seed)
    images = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1)) * 2 + 1
    with torch.no_grad():
        output = model(images)
    arrays = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    arrays[SAMPLE_INPUT] = images.permute(0, 2, 3, 1).numpy().copy()
    arrays[SAMPLE_OUTPUT] = output.numpy()
    np.savez(path, **arrays)
    return arrays


# --------------------------------------------------------------- NumPy side


def batch_norm_from_state(module: ModuleT, state: Mapping[str, np.ndarray], prefix: str) -> ModuleT:
    """Fill a numba_bn module from the entries of a PyTorch state_dict under ``prefix``."""
    module.load_state_dict({key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)})
    return module.eval()


class NumPyNetwork:
    """The same network for channels-last NumPy images, from a saved state_dict."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        self.conv = state["conv.weight"][:, :, 0, 0].T.astype(np.float32)  # (3, C): a 1x1 conv is a matmul
        self.fc = state["fc.weight"].T.astype(np.float32)
        self.head_weight, self.head_bias = state["head.weight"].T, state["head.bias"]
        self.bn2d = batch_norm_from_state(nbn.BatchNorm2d(CHANNELS, channel_axis=-1), state, "bn2d.")
        self.bn1d = batch_norm_from_state(nbn.BatchNorm1d(FEATURES), state, "bn1d.")

    def __call__(self, images_nhwc: np.ndarray) -> np.ndarray:
        features = np.maximum(self.bn2d(images_nhwc @ self.conv), 0)  # (N, H, W, C), normalised in place
        pooled = features.mean(axis=(1, 2))
        hidden = np.maximum(self.bn1d(pooled @ self.fc), 0)
        return hidden @ self.head_weight + self.head_bias


def load_state(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by key."""
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def run(use_torch: bool, seed: int = 0, reason: str = "") -> float:
    """Compare the NumPy network's outputs with PyTorch's; returns the largest absolute difference."""
    if use_torch:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "bn_model.npz"
            export(path, seed)
            print(f"trained a PyTorch model and saved its state_dict to {path.name}")
            state = load_state(path)
        source = "PyTorch, run now"
    else:
        state = load_state(SHIPPED)
        print(f"{reason}using the parameters and PyTorch outputs saved in {SHIPPED.name}")
        source = "PyTorch, saved in the file"
    network = NumPyNetwork(state)
    print(network.bn2d, network.bn1d, sep="\n")
    print(f"bn2d running_mean: {np.array2string(network.bn2d.running_mean, precision=3)}")
    output = network(state[SAMPLE_INPUT])
    difference = float(np.abs(output - state[SAMPLE_OUTPUT]).max())
    print(f"NumPy + numba_bn outputs for {len(output)} images vs {source}: max |difference| = {difference:.2e}")
    return difference


def build_parser() -> argparse.ArgumentParser:
    """The example's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-torch", action="store_true",
                        help="use the shipped .npz even when PyTorch is installed")
    parser.add_argument("--export", type=Path, metavar="FILE.npz",
                        help="only train the PyTorch model and save its state_dict and a sample to FILE.npz")
    parser.add_argument("--seed", type=int, default=0, help="seed of PyTorch's training and sample")
    return parser


def main(argv: Sequence[str] | None = None) -> float:
    """Run the example; returns the largest difference from PyTorch's outputs (0 for ``--export``)."""
    args = build_parser().parse_args(argv)
    has_torch = importlib.util.find_spec("torch") is not None
    if args.export is not None:
        if not has_torch:
            raise SystemExit("--export needs PyTorch: pip install torch")
        export(args.export, args.seed)
        print(f"saved {args.export}")
        return 0.0
    reason = "" if has_torch else "PyTorch is not installed: "
    difference = run(has_torch and not args.no_torch, args.seed, reason)
    if difference > 1e-4:
        raise SystemExit(f"the NumPy outputs differ from PyTorch's by {difference:.2e}")
    print("the outputs match")
    return difference


if __name__ == "__main__":
    main()
