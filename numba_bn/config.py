"""Tunables of the CPU kernels, in one place so tests can shrink them.

The work split depends only on the array's shape (never on the thread count),
so results are bit-identical whatever ``numba.set_num_threads`` says.
"""

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

#: Inputs with fewer values than this run on the calling thread: waking the
#: thread pool costs more than it saves on work this small.
SERIAL_BELOW = 32768

#: LLVM fast-math flags for the kernels: reassociation lets the float64
#: reductions vectorise and contraction gives FMAs, while leaving out
#: ``nnan``/``ninf`` keeps NaN and Inf handling exact.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
