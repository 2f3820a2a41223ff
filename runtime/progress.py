"""Progress bars for the long command-line steps (scoring and encoding texts, an export's conversions
and checks): the one mechanism every task but training uses (training's epochs keep Keras's bar).

tqdm on stderr, so a task's stdout (search results, summaries) stays clean; shown only on a
terminal and only once a step has taken `DELAY` seconds, so short runs, logs and tests see nothing.
"""

from __future__ import annotations

DELAY = 3.0  # seconds before a bar appears


def progress_bar(total, desc, unit="it", delay=DELAY, disable=None):
    """A tqdm bar (a context manager; `.update(n)`, `.set_description(...)`); `disable=None`: off
    when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=delay, disable=disable, leave=False, dynamic_ncols=True)


class Steps:
    """A bar over named steps: `start(name)` marks the previous step done and shows `name`."""

    def __init__(self, total, desc):
        self.bar, self.desc, self.running = progress_bar(total, desc, "step"), desc, False

    def start(self, name):
        if self.running:
            self.bar.update(1)
        self.running = True
        self.bar.set_description(f"{self.desc}: {name}")

    def close(self):
        if self.running:
            self.bar.update(1)
            self.running = False
        self.bar.close()
