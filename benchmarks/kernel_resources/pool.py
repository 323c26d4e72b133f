"""Run compile jobs in parallel worker processes, each job under a time limit.

A worker is a spawned process (no CUDA, no fork of a process that imported triton) that imports the package once
and then compiles job after job. A job that runs past the limit is stopped by killing the worker's whole process
group (the ptxas or nvcc it started included) and a fresh worker takes the next job; the job is reported as a
timeout, not lost. Results come back in completion order through ``on_result``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback


def _run_job(job):
    from . import compilers

    return compilers.compile_cuda(job) if isinstance(job, compilers.CudaJob) else compilers.compile_triton(job)


def _serve(conn) -> None:
    os.setpgrp()  # its own process group, so a timeout can stop the compilers it started as well
    from . import discover

    discover.triton_modules()  # the imports (torch, triton, the package) before the first job's clock starts
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(("ok", _run_job(job)))
        except Exception as e:  # a compile error is a result to report, not a crash of the tool
            conn.send(("error", f"{type(e).__name__}: {e}"[-3000:] or traceback.format_exc()[-3000:]))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        if self.conn.recv() != "ready":  # no time limit on start-up: it is not a compile
            raise RuntimeError("a compile worker failed to start")

    def run(self, job, limit_s: float):
        """("ok", rows) | ("error", message) | ("timeout", message); the worker is dead after a timeout."""
        self.conn.send(job)
        if self.conn.poll(limit_s):
            try:
                return self.conn.recv()
            except EOFError:
                return "error", f"the worker died (exit code {self.proc.exitcode})"
        self.stop()
        return "timeout", f"did not finish within {limit_s:g} s (stopped)"

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.join(10)

    def close(self):
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.stop()


def run_jobs(jobs: list, workers: int, limit_s: float, on_result) -> float:
    """Compile ``jobs`` (in the order given: put the longest first) on ``workers`` processes; call
    ``on_result(job, status, rows_or_message, seconds)`` for each. Returns the wall time."""
    ctx = mp.get_context("spawn")
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    lock = threading.Lock()
    start = time.perf_counter()

    def lane():
        worker = None
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                break
            if worker is None:
                worker = _Worker(ctx)
            t0 = time.perf_counter()
            status, payload = worker.run(job, limit_s)
            if status != "ok" and not worker.proc.is_alive():
                worker = None  # stopped or died: the next job gets a fresh one
            with lock:
                on_result(job, status, payload, time.perf_counter() - t0)
        if worker is not None:
            worker.close()

    lanes = [threading.Thread(target=lane, daemon=True) for _ in range(max(1, min(workers, len(jobs))))]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    return time.perf_counter() - start
