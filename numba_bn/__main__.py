"""``python -m numba_bn``: see :mod:`numba_bn.cli`."""

from .cli import main

raise SystemExit(main())
