"""Progress bars for the long command-line steps (encoding a corpus, an export's conversions and checks).

tqdm on stderr, so a task's stdout (search results, summaries) stays clean; shown only on a
terminal and only once a step has taken `DELAY` seconds, so short runs, logs and tests see nothing.
"""

from __future__ import annotations

DELAY = 3.0  # seconds before a bar appears


def progress_bar(total, desc, unit="it"):
    """A tqdm bar (a context manager; `.update(n)`, `.set_description(...)`)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=DELAY, disable=None, leave=False, dynamic_ncols=True)


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
