"""Progress bars that read well in log files.

tqdm redraws its bar in place with carriage returns; in a file (a Snakemake job's log, a Slurm
output file) that becomes one endless line. :func:`line_based` wraps such a stream so that
redraws become lines of their own: at most one per ``interval`` seconds, plus each bar's first
and final state. Everything else (logging, warnings) passes through unchanged. A terminal is
left as it is.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, TextIO


class LineProgressStream:
    """A text stream that writes tqdm's carriage-return redraws as throttled whole lines."""

    def __init__(self, stream: TextIO, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._pending: str | None = None  # the latest redraw, not written yet
        self._in_bar = False  # the last write was a redraw: the "cursor" is on a bar's line
        self._last_line = -math.inf

    def write(self, text: str) -> int:
        first, *redraws = text.split("\r")
        self._text(first)
        for redraw in redraws:
            line, newline, rest = redraw.partition("\n")
            self._redraw(line.rstrip())
            if newline:
                self._text(newline + rest)
        return len(text)

    def _redraw(self, line: str) -> None:
        if not line:  # tqdm clears a bar that does not stay (leave=False): keep its final state
            self._flush_pending()
            self._in_bar = False
            return
        self._in_bar = True
        now = self._clock()
        if now - self._last_line >= self._interval:
            self._stream.write(line + "\n")
            self._last_line, self._pending = now, None
        else:
            self._pending = line

    def _text(self, text: str) -> None:
        if not text:
            return
        if self._in_bar:  # text after a bar ends the bar's line
            self._flush_pending()
            self._in_bar = False
            text = text.removeprefix("\n")  # the bar's own line end (tqdm's close) is already written
        self._stream.write(text)

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self._stream.write(self._pending + "\n")
            self._last_line, self._pending = self._clock(), None

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._flush_pending()
        self._stream.close()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, name, ...: the wrapped stream's
        return getattr(self._stream, name)


def line_based(stream: TextIO, interval: float = 30.0) -> TextIO:
    """``stream`` itself if it is a terminal, else wrapped in a :class:`LineProgressStream`."""
    return stream if stream.isatty() else LineProgressStream(stream, interval)  # type: ignore[return-value]
