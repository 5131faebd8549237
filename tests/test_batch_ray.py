"""``segany auto --engine ray``: same files as the local runner, also when a worker is killed mid-run.

One local Ray cluster (2 CPUs, no dashboard) is started for the whole module; the job is a few tiny images and
the tiny model, so actors start quickly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_batch import GENERATOR_OVERRIDES, make_inputs, save_tiny_checkpoint, snapshot

from segany import batch

ray = pytest.importorskip("ray")
from segany.batch_ray import RayEngine  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 2**20,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Inputs, weights and the local runner's output for the same job (1 thread, like each Ray worker)."""
    root = tmp_path_factory.mktemp("ray")
    ckpt = save_tiny_checkpoint(root / "tiny.safetensors")
    make_inputs(root / "in", n_good=4)
    kwargs = batch.resolve_generator_kwargs(None, GENERATOR_OVERRIDES)
    options = batch.BatchOptions(
        root / "in", root / "local", batch.ModelSpec("tiny", str(ckpt), threads=1), kwargs, True
    )
    summary = batch.run_job(options, batch.LocalEngine(options.model, kwargs))
    assert summary.exit_code == batch.EXIT_FAILURES
    return {"options": options, "reference": snapshot(root / "local")}


def _ray_options(job: dict, out: Path) -> batch.BatchOptions:
    o = job["options"]
    return batch.BatchOptions(o.input, out, o.model, o.generator_kwargs, o.overlay)


@pytest.mark.slow
def test_ray_output_is_identical_to_local(cluster, job: dict, tmp_path: Path) -> None:
    options = _ray_options(job, tmp_path / "out")
    workers: set[str] = set()
    engine = RayEngine(options.model, options.generator_kwargs, workers=2)
    summary = batch.run_job(options, engine, on_result=lambda r: workers.add(r.worker))
    assert summary.exit_code == batch.EXIT_FAILURES and not summary.missing
    assert len(workers) == 2 and all(w.startswith("ray:") for w in workers)
    assert snapshot(tmp_path / "out") == job["reference"]


@pytest.mark.slow
def test_ray_worker_killed_mid_run_is_retried(cluster, job: dict, tmp_path: Path) -> None:
    options = _ray_options(job, tmp_path / "out")
    engine = RayEngine(options.model, options.generator_kwargs, workers=2)
    killed: list[int] = []

    def kill_first_worker(result: batch.ItemResult) -> None:
        # Called right after the engine handed this worker its next image (inputs remain): killing it now
        # loses at least that task, which must be dispatched again.
        if not killed:
            killed.append(int(result.worker.rsplit(":", 1)[1]))
            os.kill(killed[0], signal.SIGKILL)

    summary = batch.run_job(options, engine, on_result=kill_first_worker)
    assert killed and engine.lost_tasks >= 1
    assert summary.exit_code == batch.EXIT_FAILURES and not summary.missing
    assert snapshot(tmp_path / "out") == job["reference"]
