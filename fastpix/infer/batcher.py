"""Dynamic batching: requests from many threads, one worker thread that owns the Predictor (and the GPU).

The worker takes the first waiting request, then whatever else is already waiting (up to max_batch_size requests
and max_batch_pixels padded pixels: the work of one forward pass is bounded), or keeps collecting for up to
max_wait seconds after the first; with max_wait 0 an idle worker starts at once, and requests that arrive while it
runs form the next batch. Each request carries its own dropout seed (an ImageRequest), so its result does not depend
on its batch (norm modes 'instance' and 'running'). Jobs are futures: a caller that gave up (timeout) cancels its
future, and a job whose deadline has passed is dropped, before its batch runs. The queue holds at most max_queue
jobs and max_queue_pixels padded pixels. stop() lets every queued job finish first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from fastpix.infer.requests import ImageRequest

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """max_queue jobs or max_queue_pixels padded pixels are waiting already: the caller may retry later."""


class WorkerStopped(Exception):
    """The worker will not run this job: its warm-up failed, or it stopped (the server is shutting down)."""


@dataclass
class Job:
    request: ImageRequest  # the server's image is a CHW uint8 tensor
    pixels: int = 0  # the padded pixels it will cost the forward pass (0: not counted)
    deadline: float | None = None  # time.monotonic() after which nobody waits for it
    future: Future = field(default_factory=Future)
    batch_size: int = 0  # set by the worker: how many jobs shared this job's forward pass

    @property
    def image(self):
        return self.request.image

    @property
    def seed(self):
        return self.request.seed

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


_STOP = object()


class Batcher:
    def __init__(
        self,
        predictor,
        max_batch_size: int = 16,
        max_wait_s: float = 0.0,
        max_queue: int = 256,
        warmup_sizes: list[tuple[int, int]] | None = None,
        on_batch=None,
        max_batch_pixels: int | None = None,
        max_queue_pixels: int | None = None,
    ):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        # (h, w) each; None: the predictor's smallest size
        self.warmup_sizes: list[tuple[int, int] | None] = [*warmup_sizes] if warmup_sizes else [None]
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self.max_batch_pixels, self.max_queue_pixels = max_batch_pixels, max_queue_pixels
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.queued_pixels = 0  # of the jobs submitted and not yet taken by the worker
        self._pixels_lock = threading.Lock()
        self._carried: Job | None = None  # taken, but over the pixel budget of the batch it was taken for
        self.ready = threading.Event()
        self.error: str | None = None  # why the worker could not start (a failed warm-up)
        self._thread = threading.Thread(target=self._run, name="fastpix-batcher", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, image, seed=None, pixels: int = 0, deadline: float | None = None) -> Job:
        """Queue one image (anything Predictor.run accepts) with its dropout seed; QueueFull when max_queue jobs or
        max_queue_pixels padded pixels are already waiting."""
        job = Job(ImageRequest(image, seed), pixels, deadline)
        with self._pixels_lock:
            if (
                self.max_queue_pixels is not None
                and self.queued_pixels
                and self.queued_pixels + pixels > self.max_queue_pixels
            ):
                raise QueueFull(
                    f"{self.queued_pixels} padded pixels are already waiting (at most {self.max_queue_pixels})"
                )
            try:
                self.queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{self.queue.maxsize} requests are already waiting") from None
            self.queued_pixels += pixels
        return job

    def _taken(self, job):
        if job is not _STOP:
            with self._pixels_lock:
                self.queued_pixels -= job.pixels
        return job

    def stop(self, timeout: float | None = None):
        """Finish every job queued so far, then end the worker."""
        if self._thread.is_alive():
            self.queue.put(_STOP)  # blocks while the queue is full: the jobs ahead of it drain first
            self._thread.join(timeout)
        self._fail_waiting("the server is shutting down")

    def _run(self):
        import torch

        started = time.monotonic()
        named = [f"{size[1]}x{size[0]}" for size in self.warmup_sizes if size]
        log.info("warming up%s", f" at {', '.join(named)}" if named else "")
        try:
            for size in self.warmup_sizes:
                self.predictor.warmup(size)
        except Exception as exc:  # noqa: BLE001 - report it on /healthz and to every request, do not die silently
            self.error = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.error("%s", self.error)
            self._fail_waiting(self.error)
            return
        self.ready.set()
        log.info(
            "warm-up done in %.1f s: ready (%s)",
            time.monotonic() - started,
            getattr(self.predictor, "description", "the model"),
        )
        # inference_mode belongs to the thread that runs the model (it is thread-local state).
        with torch.inference_mode():
            stopping = False
            while not stopping:
                jobs, stopping = self._collect()
                if jobs:
                    self._run_batch(jobs)

    def _collect(self) -> tuple[list[Job], bool]:
        first, self._carried = self._carried or self._taken(self.queue.get()), None
        if first is _STOP:
            return [], True
        jobs, pixels = [first], first.pixels
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                job = self._taken(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            if self.max_batch_pixels is not None and pixels + job.pixels > self.max_batch_pixels:
                self._carried = job  # it opens the next batch
                break
            jobs.append(job)
            pixels += job.pixels
        return jobs, False

    def _run_batch(self, jobs: list[Job]):
        now = time.monotonic()
        for job in jobs:
            if job.expired(now):
                job.future.cancel()  # nobody waits for it any more: its forward pass would hold the worker for nothing
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # skip callers that gave up
        if not jobs:
            return
        try:
            outputs = [r.image for r in self.predictor.run([job.request for job in jobs], output_type="np")]
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
            outputs = [r.image for r in self.predictor.run([job.request], output_type="np")]
        except Exception as exc:  # noqa: BLE001 - this request's error is its own answer; the server goes on
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
                job.future.set_exception(WorkerStopped(message))
