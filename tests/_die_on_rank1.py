"""Run by tests/test_distributed.py under torchrun: the trainer, except that rank 1 dies abruptly
(os._exit, as a kill -9 or an OOM kill would) when it reaches step 2."""

import os
import sys

import train.loop as trainer

_real_lr_at = trainer.lr_at


def _lr_at_then_die(step, *args):
    if step == 2 and os.environ.get("RANK") == "1":
        os._exit(7)
    return _real_lr_at(step, *args)


trainer.lr_at = _lr_at_then_die
trainer.main(sys.argv[1:])
