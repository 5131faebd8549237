"""SIGKILL a real ``segany auto`` process, restart it, and demand exactly the files of an uninterrupted run.

Two kinds of kill (reliability.md T24/T25), each seeded and logged:

* at random moments of the run (startup, inference, publishing, the end);
* inside the atomic-write protocol: before an ``fsync``, before the ``os.replace`` and between the replace and
  the directory ``fsync``, at a seeded call count. The child patches ``os.fsync``/``os.replace`` to kill itself;
  everything else is the real CLI.

After every kill no visible file may be partial; after the final restart the output directory must equal the
uninterrupted run's byte for byte (same names, same bytes, no extras, no temp files).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import GENERATOR_FLAGS, assert_no_partial_outputs, make_inputs, save_tiny_checkpoint, snapshot

from segany import batch

SEED = 20240611

# Runs the real CLI, first patching os.fsync / os.replace so that the process SIGKILLs itself at the N-th call
# of the chosen point. argv: STAGE N COUNT_FILE segany-args...; stage "count" only records how many calls there were.
_CHILD = r"""
import atexit, json, os, signal, sys
stage, n, count_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
del sys.argv[1:4]
calls = {"fsync": 0, "replace": 0}
def hit(kind):
    calls[kind] += 1
    if stage != "count" and calls[kind] == n:
        os.kill(os.getpid(), signal.SIGKILL)
real_fsync, real_replace = os.fsync, os.replace
def fsync(fd):
    if stage in ("count", "before_fsync"):
        hit("fsync")
    return real_fsync(fd)
def replace(src, dst):
    if stage in ("count", "before_replace"):
        hit("replace")
    real_replace(src, dst)
    if stage == "after_replace":
        hit("replace")
os.fsync, os.replace = fsync, replace
if stage == "count":
    atexit.register(lambda: open(count_file, "w").write(json.dumps(calls)))
from segany.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _argv(inp: Path, out: Path, ckpt: Path) -> list[str]:
    model = ["--model", "tiny", "--checkpoint", str(ckpt)]
    return ["auto", str(inp), "--out", str(out), *model, *GENERATOR_FLAGS, "--overlay", "--no-progress"]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "segany.cli", *args]


def _child(stage: str, n: int, count_file: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-c", _CHILD, stage, str(n), str(count_file), *args]


@pytest.fixture(scope="module")
def kill_job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("kill")
    ckpt = save_tiny_checkpoint(root / "tiny.safetensors")
    make_inputs(root / "in", n_good=3)
    (root / "in/bad/bomb.png").unlink()  # keep the job small: two poison inputs are enough here
    (root / "in/bad/picture.tga").unlink()
    ref = root / "reference"
    t0 = time.monotonic()
    proc = subprocess.run(
        _child("count", 0, root / "counts.json", _argv(root / "in", ref, ckpt)), check=False
    )
    duration = time.monotonic() - t0
    assert proc.returncode == batch.EXIT_FAILURES
    counts = json.loads((root / "counts.json").read_text())
    return {"root": root, "ckpt": ckpt, "ref": snapshot(ref), "duration": duration, "counts": counts}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(kill_job: dict, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    out = tmp_path / "out"
    args = _argv(kill_job["root"] / "in", out, kill_job["ckpt"])
    killed = 0
    limit = kill_job["duration"]  # the reference run's wall time: kill moments are drawn below it
    for attempt in range(3):
        delay = rng.uniform(0.0, limit)
        t0 = time.monotonic()
        proc = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        else:
            # It finished first: the machine got faster, or a resumed run had little left to do. Draw the next
            # moment within this run's time, so that a less loaded machine does not leave nothing killed.
            limit = min(limit, time.monotonic() - t0)
        print(f"seed={SEED} attempt={attempt} kill after {delay:.2f}s rc={proc.returncode}")
        if out.exists():
            assert_no_partial_outputs(out)
    assert killed >= 1
    final = subprocess.run(_cli(args), capture_output=True, text=True, check=False)
    assert final.returncode == batch.EXIT_FAILURES, final.stderr
    assert snapshot(out) == kill_job["ref"]


@pytest.mark.slow
def test_sigkill_inside_atomic_writes_then_resume(kill_job: dict, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    out = tmp_path / "out"
    args = _argv(kill_job["root"] / "in", out, kill_job["ckpt"])
    counts = kill_job["counts"]
    # The first crash hits a fresh directory anywhere in the run; later ones hit the resumed run early, while
    # it still has items to publish.
    plan = [
        ("before_replace", rng.randint(1, counts["replace"] - 1)),
        ("before_fsync", rng.randint(1, 6)),
        ("after_replace", rng.randint(1, 3)),
    ]
    for stage, n in plan:
        proc = subprocess.run(_child(stage, n, tmp_path / "unused", args), capture_output=True, check=False)
        print(f"seed={SEED + 1} {stage} at call {n}: rc={proc.returncode}")
        assert proc.returncode == -signal.SIGKILL, (
            f"{stage} #{n} did not crash: {proc.stderr.decode()[-2000:]}"
        )
        assert_no_partial_outputs(out)
        if stage == "before_replace":  # killed inside atomic_write: its temp file is left behind, hidden
            assert list(out.rglob(f".*{batch.TMP_SUFFIX}"))
    assert snapshot(out) != kill_job["ref"]  # the crashes did leave the job unfinished
    final = subprocess.run(_cli(args), capture_output=True, text=True, check=False)
    assert final.returncode == batch.EXIT_FAILURES, final.stderr
    assert snapshot(out) == kill_job["ref"]
