"""The CPU backend: Numba ``parallel=True`` kernels on NumPy arrays.

``backend`` implements the backend protocol (``numba_bn._backend``) with the
whole-array operations of ``kernels`` and the per-channel arithmetic of
``channel_math``; ``half``, ``thread_safety`` and ``fingerprint`` serve them.
"""
