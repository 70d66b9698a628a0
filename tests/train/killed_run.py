"""Driver of the SIGKILL test: train as ``gigafactory train`` would, and SIGKILL this very
process (no cleanup, no atexit, no flush) once step ``KILL_AT`` has been reported.

Usage: python killed_run.py MODEL_YAML OUT STEPS CKPT_EVERY KILL_AT [TP MICRO_BATCH]

Under ``torchrun`` every rank runs it; rank 0 (the one that gets the events) kills itself and
torchrun then stops the others, as after a node failure.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from gigafactory.train.loop import StepDone, TrainConfig, train


def main() -> None:
    model, out, steps, every, kill_at, *rest = sys.argv[1:]
    tp, micro_batch = (int(rest[0]), int(rest[1])) if rest else (1, 0)

    def on_event(event: object) -> None:
        if isinstance(event, StepDone) and event.metrics.step == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig(
        model=model, out=Path(out), steps=int(steps), ckpt_every=int(every), batch=8,
        posts=2000, tensorboard=False, tp=tp, micro_batch=micro_batch,
        export=False,
    )  # fmt: skip
    train(cfg, on_event)


if __name__ == "__main__":
    main()
