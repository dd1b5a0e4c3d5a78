"""Tunables of the CPU kernels, in one place so tests can shrink them.

The work split depends only on the array's shape (never on the thread count),
so results are bit-identical whatever ``numba.set_num_threads`` says.
"""

import os

#: Print one line on stderr when kernels for a new dtype and layout start
#: compiling (seconds, once: the compiled code is cached on disk). Off with
#: ``NUMBA_BN_COMPILE_NOTICE=0`` in the environment, or by setting this False.
COMPILE_NOTICE = os.environ.get("NUMBA_BN_COMPILE_NOTICE", "1").strip().lower() not in ("0", "false", "no", "off")

#: Elements per work unit when a channel's values are reduced as runs
#: (channels-first layout): small enough to balance two cores on one channel,
#: large enough that the per-unit partial state is < 1% of the input.
RUN_CHUNK = 4096

#: Number of row blocks for the channels-last layout. Each block keeps its own
#: per-channel partial state, so the scratch memory is ROW_BLOCKS * C values.
ROW_BLOCKS = 64

#: Fewer row blocks for smaller inputs: at least this many values per block,
#: as each block also costs O(C) scratch and work to set up and merge, which
#: must stay small next to the block's own values.
ROW_BLOCK_VALUES = 262144

#: Reductions over rows give each block at least this many rows: a block's
#: partial state is two float64 vectors of C values, which must stay small
#: next to the block's own data (1/64 of it for float32) when C is large.
ROW_BLOCK_MIN_ROWS = 256

#: The training backward over channels-first data takes a channel at a time
#: (its sums, then its gradient, while the channel is in cache) from this
#: many channels on: fewer would leave threads idle. A shape's choice never
#: depends on the thread count, so neither do its results.
BACKWARD_BY_CHANNEL = 32

#: ... and from this many values per channel on. Below it the two passes
#: over the whole array were as fast (on (64, 256, 14, 14), 12,544 values per
#: channel, whose two inputs fit in this machine's 32 MiB cache: 0.96x), and
#: above it a channel at a time was 1.1-1.2x faster ((32, 128, 1000),
#: (32, 64, 56, 56), (4, 32, 16, 56, 56) float32).
BACKWARD_BY_CHANNEL_VALUES = 16384

#: Inputs with fewer values than this run on the calling thread: waking the
#: thread pool costs more than it saves on work this small.
SERIAL_BELOW = 32768

#: LLVM fast-math flags for the kernels: reassociation lets the float64
#: reductions vectorise and contraction gives FMAs, while leaving out
#: ``nnan``/``ninf`` keeps NaN and Inf handling exact.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# ------------------------------------------------------------------ CUDA
# Launch geometry of the CUDA kernels (read at every call, so tests can use
# tiny blocks that still span several blocks per channel).

#: Threads per block: a power of two from 32 to 512 (``numba_bn.cuda.limits.MAX_THREADS``).
CUDA_THREADS = 256

#: Blocks a reduction aims to launch in all, summed over channels: several
#: waves on a large GPU, so that a few channels with many values each are
#: still spread over the whole device (the partial states are then merged).
CUDA_TARGET_BLOCKS = 1024

#: Fewest values each thread reduces before another block per channel is
#: launched: below this the merge costs more than the extra parallelism.
CUDA_VALUES_PER_THREAD = 16

#: Merge within warps with shuffles before the shared-memory tree. ``None``
#: means "on a real GPU"; the CUDA simulator has no warp intrinsics.
CUDA_WARP_SHUFFLE = None

# ------------------------------------------------- row normalisations
# GroupNorm, InstanceNorm and LayerNorm (``numba_bn/cpu/row_kernels.py``).

#: Rows are split into pieces of about this many values when there are few
#: of them (below ``NORM_FEW_ROWS``) and they are longer than this, so that
#: one large group or layer still keeps every core busy.
NORM_PART_VALUES = 65536

#: Fewer rows than this, each longer than ``NORM_PART_VALUES``: split them.
NORM_FEW_ROWS = 32

#: Most blocks of whole rows in a backward; each block keeps its own float64
#: partial sums of the weight's and bias's gradients.
NORM_ROW_BLOCKS = 64
