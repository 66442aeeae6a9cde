"""Progress bars in log files: tqdm's redraws become throttled whole lines."""

import io
import itertools
import logging

from tqdm import tqdm

from anodiff.progress import LineProgressStream, line_based


def _stream(interval=10.0):
    ticks = itertools.count()  # one "second" per reading of the clock
    log = io.StringIO()
    return log, LineProgressStream(log, interval=interval, clock=lambda: float(next(ticks)))


def test_a_bar_becomes_few_whole_lines_ending_in_its_final_state():
    log, stream = _stream()
    for _ in tqdm(range(100), desc="train", file=stream, mininterval=0, miniters=1):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert 3 <= len(lines) <= 100 // 10 + 2  # throttled: the first state, one per interval, the last
    assert lines[0].startswith("train:   0%") and "100/100" in lines[-1]
    assert all(line.startswith("train:") for line in lines)


def test_log_lines_between_redraws_stay_whole_and_a_cleared_bar_keeps_its_final_state():
    log, stream = _stream(interval=1000.0)
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test_progress")
    logger.addHandler(handler)
    try:
        bar = tqdm(total=3, desc="predict", file=stream, mininterval=0, miniters=1, leave=False)
        bar.update()
        logger.warning("halfway")
        bar.update(2)
        bar.close()
        logger.warning("done")
    finally:
        logger.removeHandler(handler)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("predict:   0%") and lines[1].startswith("predict:  33%")
    assert lines[2] == "halfway" and "3/3" in lines[3] and lines[4] == "done" and len(lines) == 5


def test_a_terminal_is_left_alone():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = Terminal(), io.StringIO()
    assert line_based(terminal) is terminal
    wrapped = line_based(log)
    assert isinstance(wrapped, LineProgressStream) and not wrapped.isatty() and wrapped.getvalue() == ""
