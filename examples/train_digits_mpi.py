"""Data-parallel training of the digits MLP over MPI processes, with SyncBatchNorm.

Run with ``mpiexec -n 4 python examples/train_digits_mpi.py`` (``pip install
'numba_bn[mpi]' scikit-learn`` gives mpi4py, an MPI with its ``mpiexec``, and
the data set). Every process builds the same network as
``train_digits.py``'s MLP, with its BatchNorm1d layers turned into
``SyncBatchNorm``, draws the same shuffled batches and trains on its share
of each one (shares of unequal size when the batch does not divide evenly).
The BatchNorm layers normalise with the statistics of the whole batch, and
the other gradients are summed over processes, so every process follows the
training of one process on the whole batch. ``--check`` also runs that
one-process training on rank 0 and compares accuracies and running buffers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits as digits  # noqa: E402  (the layers, model and data set of the one-process example)

import numba_bn as nbn  # noqa: E402


def synchronised(model: digits.Model, comm) -> digits.Model:
    """``model`` with each BatchNorm layer's module replaced by a SyncBatchNorm sharing its arrays."""
    for layer in model.layers:
        if isinstance(layer, digits.BatchNorm):
            layer.module = nbn.SyncBatchNorm.from_batchnorm(layer.module, comm=comm)
    return model


def train_step(model: digits.Model, x: np.ndarray, labels: np.ndarray, batch_size: int, sum_over_ranks) -> float:
    """One SGD step's gradients for this process's share of a batch of ``batch_size`` examples.

    The loss is the mean over the whole batch, so each share's gradient is
    divided by ``batch_size`` (not the share's size) and the shares' gradients
    are summed by ``sum_over_ranks``. Returns the whole batch's loss.
    """
    loss = model.loss_and_backward(x, labels, batch_size)
    for layer in model.layers:
        for owner, _, grad_name in layer.parameters():
            setattr(owner, grad_name, sum_over_ranks(getattr(owner, grad_name)))
    return float(sum_over_ranks(np.array([loss]))[0])


def train(data, epochs: int, batch_size: int, learning_rate: float, seed: int, comm=None) -> dict:
    """Train the MLP; with ``comm``, on this process's shares of every batch. Returns accuracies and buffers."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    rng = np.random.default_rng(seed)  # the same seed everywhere: the same weights and batches
    model = digits.mlp(True, rng)
    if comm is None:
        def sum_over_ranks(values):
            return values
    else:
        from mpi4py import MPI

        model = synchronised(model, comm)

        def sum_over_ranks(values):
            total = np.array(values, copy=True)
            comm.Allreduce(MPI.IN_PLACE, total)
            return total

    train_images, train_labels, test_images, test_labels = data
    x_train = digits.model_input("mlp", train_images)
    losses, accuracies = [], []
    for _ in range(epochs):
        order = rng.permutation(len(train_labels))
        for first in range(0, len(order) - batch_size + 1, batch_size):
            share = np.array_split(order[first:first + batch_size], size)[rank]
            losses.append(train_step(model, x_train[share], train_labels[share], batch_size, sum_over_ranks))
            model.sgd_step(learning_rate)
        # Evaluation communicates nothing: every process scores the whole test set alone.
        accuracies.append(model.accuracy(digits.model_input("mlp", test_images), test_labels))
    buffers = [layer.module.running_var.copy() for layer in model.layers if isinstance(layer, digits.BatchNorm)]
    return {"losses": np.array(losses), "test_accuracy": np.array(accuracies), "running_var": buffers}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="passes over the training set (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per SGD step, all processes together")
    parser.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and shuffling")
    parser.add_argument("--check", action="store_true",
                        help="also train on one process (rank 0) and compare")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mpi4py import MPI

    args = build_parser().parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.batch_size < 2 * size:
        raise SystemExit(f"--batch-size must be >= 2 per process ({2 * size}), got {args.batch_size}")
    data = digits.load_digits_split(args.seed)
    result = train(data, args.epochs, args.batch_size, args.lr, args.seed, comm)
    # Every process holds the same model: the running buffers agree bit for bit.
    same = comm.allgather(b"".join(v.tobytes() for v in result["running_var"]))
    if rank == 0:
        print(f"{size} processes, batches of {args.batch_size} split "
              f"{[len(s) for s in np.array_split(np.arange(args.batch_size), size)]}: "
              f"loss {result['losses'][:10].mean():.3f} -> {result['losses'][-10:].mean():.3f}, "
              f"test accuracy {100 * result['test_accuracy'][-1]:.1f}%")
        print(f"running buffers identical on every process: {all(blob == same[0] for blob in same)}")
    if args.check and rank == 0:
        alone = train(data, args.epochs, args.batch_size, args.lr, args.seed)
        difference = max(float(np.max(np.abs(a - b) / np.abs(b))) for a, b in zip(result["running_var"],
                                                                                 alone["running_var"]))
        print(f"one process on the whole batch: test accuracy {100 * alone['test_accuracy'][-1]:.1f}%, "
              f"running_var max relative difference {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
