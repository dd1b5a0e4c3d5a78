"""A plain-text progress bar on stderr, with no dependency.

On a terminal the bar is redrawn in place; when stderr is a file or a pipe
(CI logs) each new step label is one line, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[########------]  7/20  label`` with the elapsed time.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file, optional
        Where to draw (default ``sys.stderr``).
    width : int
        Characters of the bar itself.
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        self.total = max(1, int(total))
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0
        self._start = time.perf_counter()
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_length = 0
        self._last_label: str | None = None

    def update(self, label: str, advance: int = 0) -> None:
        """Show ``label`` as the current step, after advancing by ``advance`` steps."""
        self.done = min(self.total, self.done + advance)
        filled = round(self.width * self.done / self.total)
        elapsed = time.perf_counter() - self._start
        text = (f"[{'#' * filled}{'-' * (self.width - filled)}] "
                f"{self.done:>{len(str(self.total))}}/{self.total} {elapsed:5.1f}s  {label}")
        if self._interactive:
            padding = " " * max(0, self._last_length - len(text))
            self.stream.write("\r" + text + padding)
            self._last_length = len(text)
        elif label != self._last_label:
            self.stream.write(text + "\n")
        self._last_label = label
        self.stream.flush()

    def finish(self, label: str = "done") -> None:
        """Fill the bar and end its line."""
        self.update(label, advance=self.total - self.done)
        if self._interactive:
            self.stream.write("\n")
            self.stream.flush()
