"""MMEarth MP-MAE pretraining: ``python -m train`` (``loop.py``: the loop and ``main``), set up by ``run.py`` from
``config.py``'s options; one optimiser step is ``step.py``'s (the e2e benchmark times the same); data in ``data/``;
the trainer's own profiling in ``telemetry.py``, ``profiling.py``, ``health.py``, ``summary.py`` (``python -m
train.report`` compares runs); the linear probe is ``probe.py``."""
