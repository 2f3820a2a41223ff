"""One worker of tests/test_multiworker.py: `run_tasks.main(argv)`, then the weights it trained.

The test needs every worker's final weights, but only the chief writes a model directory, so
this wrapper records the model `Trainer.fit` trained and saves its weights to `$MW_DUMP`
(an .npz outside every run directory) once `run_tasks.main` returns. Exit code: main's.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import run_tasks  # noqa: E402
from training import trainer  # noqa: E402

def recording(fit, fitted):
    """`Trainer.fit` that appends the model it trains to `fitted` (a list)."""
    def fit_and_record(self, model, *args, **kwargs):
        fitted.append(model)
        return fit(self, model, *args, **kwargs)
    return fit_and_record


if __name__ == "__main__":
    fitted = []
    trainer.Trainer.fit = recording(trainer.Trainer.fit, fitted)
    rc = run_tasks.main(sys.argv[1:])
    if fitted and rc == 0:
        np.savez(os.environ["MW_DUMP"], *[np.asarray(w) for w in fitted[-1].get_weights()])
    sys.exit(rc)
