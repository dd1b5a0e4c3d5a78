"""The CUDA backend: ``numba.cuda`` kernels on device arrays.

The twin of ``numba_bn.cpu``, file for file where both have one: ``backend``
implements the backend protocol (``numba_bn._backend``) with the whole-array
kernels of ``kernels`` and the per-channel kernels of ``channel_math``;
``launch`` (views, launch geometry), ``scratch`` (reduction staging buffers),
``arrays`` (device arrays), ``stream`` and ``limits`` (block sizes) serve
them. ``report`` is ``python -m numba_bn cuda-report``: ``workload`` runs
every path of the backend, ``launch_record`` records what it launches,
``ptx_resources`` compiles that for a GPU without one, ``occupancy`` does the
arithmetic. ``numba.cuda`` itself is imported in one place, ``numba_cuda``,
so that moving to another CUDA Python compiler touches one module. Importing
this package imports nothing of CUDA: ``stream``, ``limits``, ``occupancy``
and ``report`` work without it.
"""
