"""Ray engine for ``segany auto``: the batch job's images spread over actors that each load the model once.

The driver (``segany.batch.run_job``) keeps all file I/O: it ships each image's bytes to an actor and publishes
the bytes the actor returns, so the outputs are the local runner's outputs, workers need no shared storage, and
a repeated computation can never duplicate a file (names are deterministic, writes atomic).

Fault handling, given Ray's guarantees (actor tasks are at-most-once by default):

* Actors are created with ``max_restarts`` so Ray restarts a worker process that dies (OOM kill, segfault,
  SIGKILL, lost node); the replacement reloads the model.
* A task lost with its worker is re-dispatched by the driver (to any live worker) up to ``max_attempts`` times in
  all; an image that keeps killing workers becomes a ``WorkerDied`` failure record instead of stalling the job.
* Python exceptions inside a task (corrupt image, ...) are not retried: they are failure records already.
* Every worker reports the SHA-256 of its weights; the job refuses to start unless all agree, so a worker with
  a different checkpoint file cannot mix its masks into the output.

The dashboard is never started by this module (``include_dashboard=False``); for an existing cluster start it
with ``ray start --head --include-dashboard=false``.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from segany.batch import BatchError, ItemResult, ModelSpec, Payload, Runtime

_LOST_WORKER_ERROR = "WorkerDied"


class _Worker:
    """Actor body: builds the model and generator once, then processes payloads."""

    def __init__(self, model: ModelSpec, generator_kwargs: Mapping[str, Any], threads: int) -> None:
        import torch

        from segany import batch

        torch.set_num_threads(threads)
        sam = batch.load_model(model)
        self._runtime = batch.model_runtime(sam, model)
        self._generator = batch.generator_class()(sam, output_mode="coco_rle", **dict(generator_kwargs))
        self._name = f"ray:{os.uname().nodename}:{os.getpid()}"

    def runtime(self) -> Runtime:
        return self._runtime

    def pid(self) -> int:
        return os.getpid()

    def process(self, payload: Payload) -> ItemResult:
        from segany.batch import process_payload

        return process_payload(payload, self._generator, self._name)


class RayEngine:
    """``segany.batch.Engine`` on a Ray cluster (an existing one at ``address``, else a fresh local one).

    Arguments:
        model, generator_kwargs: what every worker builds.
        address: Ray cluster address (``host:port``, or ``"auto"`` for the cluster ``ray start`` runs on this
            machine); ``None`` starts a private local cluster. If Ray is already initialised in this process
            (tests), that connection is used and left open.
        workers: number of actors; default ``cluster CPUs // cpus_per_worker`` (at least 1).
        cpus_per_worker, gpus_per_worker: resources per actor; torch uses ``model.threads`` threads in each,
            by default ``max(1, int(cpus_per_worker))``.
        max_attempts: dispatches of one image before it is recorded as ``WorkerDied``.
        max_restarts: restarts Ray grants each actor.
        in_flight_per_worker: tasks queued per actor, so that a worker never waits for the driver.
    """

    def __init__(
        self,
        model: ModelSpec,
        generator_kwargs: Mapping[str, Any],
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        max_attempts: int = 3,
        max_restarts: int = 16,
        in_flight_per_worker: int = 2,
    ) -> None:
        if workers is not None and workers < 1:
            raise BatchError(f"workers must be >= 1, got {workers}")
        if cpus_per_worker <= 0 or gpus_per_worker < 0 or max_attempts < 1 or in_flight_per_worker < 1:
            raise BatchError("invalid Ray engine resources or retry settings")
        self.model = model
        self.generator_kwargs = dict(generator_kwargs)
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts
        self.in_flight_per_worker = in_flight_per_worker
        self._actors: list[Any] = []
        self._owns_ray = False
        self.lost_tasks = 0  # tasks lost with their worker and dispatched again (for logs and tests)

    def start(self) -> Runtime:
        import ray

        if not ray.is_initialized():
            # "local" starts a private cluster even when another one runs on this machine
            ray.init(address=self.address or "local", include_dashboard=False)
            self._owns_ray = True
        n = self.workers
        if n is None:
            n = max(1, int(ray.cluster_resources().get("CPU", 1.0) // self.cpus_per_worker))
        actor_cls = ray.remote(_Worker).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=self.max_restarts,
            max_task_retries=0,  # lost tasks are re-dispatched by run(), which counts attempts per image
        )
        threads = self.model.threads or max(1, int(self.cpus_per_worker))
        self._actors = [actor_cls.remote(self.model, self.generator_kwargs, threads) for _ in range(n)]
        try:
            runtimes = ray.get([a.runtime.remote() for a in self._actors])
        except ray.exceptions.RayError as exc:
            raise BatchError(f"Ray workers failed to load the model: {exc}") from exc
        if len(set(runtimes)) != 1:
            raise BatchError(f"Ray workers disagree on weights, device or threads: {sorted(set(runtimes))}")
        return runtimes[0]

    def worker_pids(self) -> list[int]:
        """Process ids of the live actors (tests kill one to check recovery)."""
        import ray

        return [int(p) for p in ray.get([a.pid.remote() for a in self._actors])]

    def _alive(self, actor: Any, patience_s: float = 600.0) -> bool:
        """Wait for a (possibly restarting) actor; ``False`` once Ray has given up on it or it stays away."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + patience_s
        while True:
            try:
                ray.get(actor.pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return True
            except ActorUnavailableError:  # restarting: ask again until the deadline
                if time.monotonic() > deadline:
                    return False
                time.sleep(1.0)
            except (RayActorError, GetTimeoutError):
                return False

    def run(self, payloads: Iterable[Payload]) -> Iterator[ItemResult]:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        source = iter(payloads)
        retry: collections.deque[Payload] = collections.deque()
        attempts: collections.Counter[str] = collections.Counter()
        in_flight: dict[Any, tuple[int, Payload]] = {}
        load = collections.Counter[int]()
        live = set(range(len(self._actors)))

        def fill() -> None:
            for i in sorted(live):
                while load[i] < self.in_flight_per_worker:
                    payload = retry.popleft() if retry else next(source, None)
                    if payload is None:
                        return
                    in_flight[self._actors[i].process.remote(payload)] = (i, payload)
                    load[i] += 1

        fill()
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            i, payload = in_flight.pop(ref)
            load[i] -= 1
            result: ItemResult | None
            try:
                result = ray.get(ref)
            except RayActorError as exc:  # the worker died (or was unreachable) with the task
                # An unreachable worker may never have started the task: only a death counts as an attempt,
                # so that an image is blamed only for workers that died while holding it.
                if not isinstance(exc, ActorUnavailableError):
                    attempts[payload.key] += 1
                self.lost_tasks += 1
                if attempts[payload.key] >= self.max_attempts:
                    result = ItemResult(
                        payload.key,
                        error=_LOST_WORKER_ERROR,
                        message=f"worker lost {attempts[payload.key]} times: {type(exc).__name__}",
                    )
                else:
                    result = None
                    retry.append(payload)
                if i in live and not self._alive(self._actors[i]):
                    live.discard(i)
                    if not live:
                        raise BatchError("all Ray workers died; rerun the same command to resume") from exc
            except RayTaskError as exc:  # not a lost worker: the task itself failed outside process_payload
                result = ItemResult(
                    payload.key, error=type(exc.cause).__name__, message=str(exc.cause)[:2000]
                )
            fill()  # keep workers busy before handing the result to the caller
            if result is not None:
                yield result

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
        self._actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
