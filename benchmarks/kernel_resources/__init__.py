"""Compile truth without a GPU: every Triton kernel x autotune config x the specialisations training launches, and
every CUDA kernel, compiled for the GPU architectures we run on, with the registers, spills, shared memory, compile
time and an occupancy estimate of each, in parallel processes with a time limit per compile.

``python -m benchmarks.kernel_resources [--check]``; see ``__main__.py`` for the options.

* ``discover.py``   the Triton kernels the package defines (walked, not listed)
* ``scenarios.py``  the launches training makes (captured from the real launchers) -> one job per distinct compile
* ``compilers.py``  Triton (``triton.compile`` for a ``GPUTarget``, ptxas -v) and nvcc (``-cubin -Xptxas -v``)
* ``ptxas.py``      the ``ptxas -v`` parser and the occupancy arithmetic (pure functions)
* ``pool.py``       worker processes with a per-job time limit
* ``record.py``     the record's rows and the ``--check`` rules
"""
