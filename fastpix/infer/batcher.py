"""Dynamic batching: requests from many threads, one worker thread that owns the Predictor (and the GPU).

The worker takes the first waiting request, then whatever else is already waiting (up to max_batch_size), or keeps
collecting for up to max_wait seconds after the first; with max_wait 0 an idle worker starts at once, and requests
that arrive while it runs form the next batch. Each request carries its own dropout seed, so its result does not
depend on its batch (norm modes 'instance' and 'running'). Jobs are futures: a caller that gave up (timeout)
cancels its future, and the worker skips it if it has not started. stop() lets every queued job finish first.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field


class QueueFull(Exception):
    pass


@dataclass
class Job:
    image: object  # anything Predictor accepts; the server passes a CHW float tensor
    seed: int | None
    future: Future = field(default_factory=Future)
    batch_size: int = 0  # set by the worker: how many jobs shared this job's forward pass


_STOP = object()


class Batcher:
    def __init__(self, predictor, max_batch_size: int = 16, max_wait_s: float = 0.0, max_queue: int = 256,
                 warmup_size: tuple[int, int] | None = None, on_batch=None):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.warmup_size = warmup_size
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.ready = threading.Event()
        self.error: str | None = None  # why the worker could not start (a failed warm-up)
        self._thread = threading.Thread(target=self._run, name="fastpix-batcher", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, image, seed=None) -> Job:
        job = Job(image, seed)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} requests are already waiting") from None
        return job

    def stop(self, timeout: float | None = None):
        """Finish every job queued so far, then end the worker."""
        if self._thread.is_alive():
            self.queue.put(_STOP)  # blocks while the queue is full: the jobs ahead of it drain first
            self._thread.join(timeout)
        self._fail_waiting("the server is shutting down")

    def _run(self):
        import torch

        try:
            self.predictor.warmup(self.warmup_size)
        except Exception as exc:  # noqa: BLE001 - report it on /healthz and to every request, do not die silently
            self.error = f"warm-up failed: {type(exc).__name__}: {exc}"
            self._fail_waiting(self.error)
            return
        self.ready.set()
        # inference_mode belongs to the thread that runs the model (it is thread-local state).
        with torch.inference_mode():
            stopping = False
            while not stopping:
                jobs, stopping = self._collect()
                if jobs:
                    self._run_batch(jobs)

    def _collect(self) -> tuple[list[Job], bool]:
        first = self.queue.get()
        if first is _STOP:
            return [], True
        jobs = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run_batch(self, jobs: list[Job]):
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # skip callers that gave up
        if not jobs:
            return
        try:
            outputs = self.predictor([job.image for job in jobs], seed=[job.seed for job in jobs],
                                     output_type="np")
        except Exception as exc:  # noqa: BLE001 - one failing request must not take the others (or the server) down
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:  # find the culprit: each job alone
                self._run_batch_of_one(job)
            return
        self._finish(jobs, outputs)

    def _run_batch_of_one(self, job: Job):
        try:
            outputs = self.predictor([job.image], seed=[job.seed], output_type="np")
        except Exception as exc:  # noqa: BLE001
            job.future.set_exception(exc)
            return
        self._finish([job], outputs)

    def _finish(self, jobs: list[Job], outputs: list):
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        for job, output in zip(jobs, outputs):
            job.batch_size = len(jobs)
            job.future.set_result(output)

    def _fail_waiting(self, message: str):
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError(message))
