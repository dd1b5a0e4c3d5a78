"""Exact per-channel statistics of an on-disk dataset larger than memory, with Dask.

Writes a float32 image dataset ``(N, C, H, W)`` to disk (a ``.npy`` file read
through a memory map, or a Zarr array with ``--zarr``), then computes its
dataset-wide per-channel mean and variance with ``numba_bn.dask.channel_stats``:
numba_bn's statistics kernel reduces each chunk, and the per-chunk
``(count, mean, M2)`` states are merged with Chan's formula, so only one chunk
per worker is in memory at a time and the result is exact (these are the
statistics to normalise the dataset with, or to set a ``BatchNorm``'s running
buffers from). A streaming float64 NumPy pass over the same file checks them.

    python examples/dask_dataset_stats.py               # 256 MB in a temporary directory
    python examples/dask_dataset_stats.py --small       # 1 MB, a few seconds
    python examples/dask_dataset_stats.py --cluster     # on a local dask.distributed cluster

Needs the ``dask`` extra (``pip install 'numba_bn[dask]'``); ``--zarr`` needs zarr.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Channels, height and width of one sample (64 KiB in float32).
SAMPLE_SHAPE = (16, 32, 32)
SAMPLE_BYTES = int(np.prod(SAMPLE_SHAPE)) * 4
#: Largest relative difference from the float64 NumPy pass that counts as agreement.
TOLERANCE = 1e-9


class NpyFile:
    """A ``.npy`` file as an array-like for ``dask.array.from_array``, opened where a chunk is read.

    Dask sends this small object (a path, a shape, a dtype) to the workers
    instead of the data; each chunk is read through a memory map.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        array = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        return np.asarray(np.load(self.path, mmap_mode="r")[key])


def channel_scales(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's true mean and standard deviation: large offsets, to show the stability."""
    return 1000.0 + 100.0 * np.arange(channels), 1.0 + 0.25 * np.arange(channels)


def write_dataset(directory: Path, samples: int, samples_per_chunk: int, use_zarr: bool, seed: int = 0) -> Path:
    """Write ``samples`` random float32 samples, one chunk at a time (never all in memory); returns the path."""
    rng = np.random.default_rng(seed)
    shape = (samples,) + SAMPLE_SHAPE
    offsets, scales = channel_scales(SAMPLE_SHAPE[0])
    if use_zarr:
        import zarr

        path = directory / "dataset.zarr"
        target = zarr.create_array(
            store=str(path), shape=shape, chunks=(samples_per_chunk,) + SAMPLE_SHAPE, dtype="float32"
        )
    else:
        path = directory / "dataset.npy"
        target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for start in range(0, samples, samples_per_chunk):
        count = min(samples_per_chunk, samples - start)
        noise = rng.standard_normal((count,) + SAMPLE_SHAPE, dtype=np.float32)
        target[start : start + count] = offsets[:, None, None] + scales[:, None, None] * noise
    if not use_zarr:
        target.flush()
        del target  # closes the memory map
    return path


def open_dataset(path: Path, samples_per_chunk: int):
    """The dataset as a lazy ``dask.array.Array`` chunked along the samples."""
    import dask.array as da

    if path.suffix == ".zarr":
        return da.from_zarr(str(path))
    source = NpyFile(path)
    return da.from_array(source, chunks=(samples_per_chunk,) + SAMPLE_SHAPE, meta=np.empty((0,) * 4, np.float32))


def streaming_float64_stats(path: Path, samples_per_chunk: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, biased variance)`` per channel by two plain float64 NumPy passes over the file."""
    if path.suffix == ".zarr":
        import zarr

        data = zarr.open_array(str(path), mode="r")
    else:
        data = np.load(path, mmap_mode="r")
    samples, channels = data.shape[0], data.shape[1]
    batches = [slice(start, start + samples_per_chunk) for start in range(0, samples, samples_per_chunk)]
    count = samples * data.shape[2] * data.shape[3]
    total = np.zeros(channels)
    for batch in batches:
        total += np.asarray(data[batch], dtype=np.float64).sum(axis=(0, 2, 3))
    mean = total / count
    squares = np.zeros(channels)
    for batch in batches:
        squares += ((np.asarray(data[batch], dtype=np.float64) - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3))
    return count, mean, squares / count


def compute_stats(x, use_cluster: bool):
    """``numba_bn.dask.channel_stats(x)`` with a progress display: a bar, or a task summary on a cluster."""
    import numba_bn.dask

    if not use_cluster:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return numba_bn.dask.channel_stats(x)
    from dask.distributed import Client, LocalCluster, get_task_stream

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with cluster, Client(cluster) as client:
        print(
            f"local cluster of {len(client.scheduler_info()['workers'])} worker processes, "
            f"dashboard {client.dashboard_link}"
        )
        with get_task_stream() as tasks:
            stats = numba_bn.dask.channel_stats(x)
        print(f"{len(tasks.data)} tasks ran on the workers")
        return stats


def build_parser() -> argparse.ArgumentParser:
    """The example's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path",
        type=Path,
        default=None,
        help="directory to write the dataset to and keep it in (default: a temporary one)",
    )
    parser.add_argument("--size", type=float, default=256.0, metavar="MB", help="dataset size in MB (default 256)")
    parser.add_argument("--chunk-mb", type=float, default=8.0, metavar="MB", help="chunk size in MB (default 8)")
    parser.add_argument("--small", action="store_true", help="a 1 MB dataset in 0.25 MB chunks (a quick check)")
    parser.add_argument("--zarr", action="store_true", help="store the dataset as a Zarr array (needs zarr)")
    parser.add_argument(
        "--cluster", action="store_true", help="compute on a local dask.distributed cluster of 2 worker processes"
    )
    return parser


def run(directory: Path, args: argparse.Namespace) -> float:
    """Write, reduce and check the dataset in ``directory``; returns the largest relative difference."""
    size, chunk = (1.0, 0.25) if args.small else (args.size, args.chunk_mb)
    samples = max(2, round(size * 2**20 / SAMPLE_BYTES))
    samples_per_chunk = max(1, min(samples, round(chunk * 2**20 / SAMPLE_BYTES)))
    start = time.perf_counter()
    path = write_dataset(directory, samples, samples_per_chunk, args.zarr)
    x = open_dataset(path, samples_per_chunk)
    print(
        f"wrote {path} in {time.perf_counter() - start:.1f} s: shape {x.shape}, {x.nbytes / 2**20:.1f} MB "
        f"in {x.npartitions} chunks of {samples_per_chunk * SAMPLE_BYTES / 2**20:.2f} MB"
    )

    start = time.perf_counter()
    stats = compute_stats(x, args.cluster)
    seconds = time.perf_counter() - start
    print(f"numba_bn.dask.channel_stats: {stats.count} values per channel in {seconds:.2f} s")

    count, mean, var = streaming_float64_stats(path, samples_per_chunk)
    if stats.count != count:
        raise SystemExit(f"numba_bn.dask counted {stats.count} values per channel, NumPy {count}")
    difference = max(
        float(np.max(np.abs(stats.mean - mean) / np.abs(mean))), float(np.max(np.abs(stats.var - var) / var))
    )
    true_mean, true_std = channel_scales(len(mean))
    print("channel      mean         std   (generated with mean, std)")
    for channel in range(stats.num_features):
        print(
            f"{channel:7d} {stats.mean[channel]:10.4f} {np.sqrt(stats.var[channel]):10.5f}   "
            f"({true_mean[channel]:g}, {true_std[channel]:g})"
        )
    print(f"largest relative difference from a float64 NumPy pass over the file: {difference:.1e}")
    if difference > TOLERANCE:
        raise SystemExit(f"the statistics differ from the float64 NumPy pass by {difference:.1e}")
    print("the statistics match")
    return difference


def main(argv: Sequence[str] | None = None) -> float:
    """Run the example; returns the largest relative difference from the float64 NumPy pass."""
    args = build_parser().parse_args(argv)
    if args.path is not None:
        args.path.mkdir(parents=True, exist_ok=True)
        return run(args.path, args)
    with tempfile.TemporaryDirectory(prefix="numba_bn_dask_") as directory:
        return run(Path(directory), args)


if __name__ == "__main__":  # worker processes of --cluster re-import this file: start nothing then
    main()
