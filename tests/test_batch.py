"""Batch runner (``segany auto``, local engine): naming, atomic files, poison inputs, resume, reconciliation.

The helpers at the top (seeded inputs and weights, directory snapshots) are shared with the kill-and-resume and
Ray tests (``test_batch_kill.py``, ``test_batch_ray.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segany import batch
from segany.data.sa1b import read_sa1b, write_sa1b

# Low thresholds so that random weights still give masks.
GENERATOR_OVERRIDES = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
GENERATOR_FLAGS = ["--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
POISON = {
    "bad/zero.jpg": "EmptyImage",
    "bad/truncated.png": "CorruptImage",
    "bad/bomb.png": "ImageTooLarge",
    "bad/picture.tga": "UnsupportedFormat",
}


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Seeded random tiny weights, saved so that every process and worker loads the very same model."""
    from segany.build import sam_model_registry
    from segany.checkpoint import save_safetensors

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = sam_model_registry["tiny"]()
    save_safetensors(path, model.state_dict())
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30_000) -> bytes:
    """A ~100-byte PNG whose header declares ``side``x``side`` pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def make_inputs(root: Path, n_good: int = 3, poison: bool = True, seed: int = 0) -> dict[str, str]:
    """Write ``n_good`` small seeded images (nested one level for some) plus the poison files.

    Returns ``{key: expected error class or "ok"}``.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for i in range(n_good):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
        img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        img[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, 3)
        key = f"set{i % 2}/img{i:02d}.png"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / key)
        expected[key] = "ok"
    if poison:
        (root / "bad").mkdir(parents=True, exist_ok=True)
        (root / "bad/zero.jpg").write_bytes(b"")
        good = (root / next(iter(expected))).read_bytes()
        (root / "bad/truncated.png").write_bytes(good[: len(good) // 2])
        (root / "bad/bomb.png").write_bytes(bomb_png())
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="TGA")
        (root / "bad/picture.tga").write_bytes(buf.getvalue())
        expected.update(POISON)
    return expected


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes, for byte-for-byte comparisons."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_no_partial_outputs(out: Path) -> None:
    """Every visible file is complete and valid; only hidden ``*.segany-tmp`` files may be partial."""
    for p in out.rglob("*"):
        if not p.is_file():
            continue
        if p.name.startswith("."):
            assert p.name == batch.LOCK_NAME or p.name.endswith(batch.TMP_SUFFIX), p
        elif p.name.endswith(".overlay.png"):
            Image.open(p).load()
        elif p.name in (batch.JOB_NAME, batch.SUMMARY_NAME):
            json.loads(p.read_bytes())
        elif p.name == batch.FAILURES_NAME:
            for line in p.read_text().splitlines():
                json.loads(line)
        else:
            read_sa1b(p)


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("batch")
    ckpt = save_tiny_checkpoint(root / "tiny.safetensors")
    expected = make_inputs(root / "in")
    return root / "in", ckpt, expected


def _options(
    inp: Path, out: Path, ckpt: Path, overlay: bool = False, **overrides: object
) -> batch.BatchOptions:
    kwargs = batch.resolve_generator_kwargs(None, {**GENERATOR_OVERRIDES, **overrides})
    return batch.BatchOptions(inp, out, batch.ModelSpec("tiny", str(ckpt)), kwargs, overlay)


def _run(options: batch.BatchOptions) -> batch.BatchSummary:
    return batch.run_job(options, batch.LocalEngine(options.model, options.generator_kwargs))


@pytest.fixture(scope="module")
def reference(
    job_inputs: tuple[Path, Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One uninterrupted run with overlays (read-only for the tests)."""
    inp, ckpt, _ = job_inputs
    out = tmp_path_factory.mktemp("reference")
    summary = _run(_options(inp, out, ckpt, overlay=True))
    assert summary.exit_code == batch.EXIT_FAILURES
    return out


def test_outputs_names_and_failure_records(job_inputs, reference: Path, tmp_path: Path) -> None:
    inp, _ckpt, expected = job_inputs
    job_bytes = (reference / batch.JOB_NAME).read_bytes()
    job = json.loads(job_bytes)
    assert job["model"] == "tiny" and job["generator"]["points_per_side"] == 3
    assert (
        job["generator"]["box_nms_thresh"] == 0.7
    )  # defaults are spelled out, so the fingerprint is complete
    job_fp = hashlib.sha256(job_bytes).hexdigest()
    seen_masks = 0
    for key, status in expected.items():
        if status != "ok":
            continue
        content = hashlib.sha256((inp / key).read_bytes()).hexdigest()
        digest = hashlib.sha256(f"{job_fp}\0{key}\0{content}".encode()).hexdigest()
        parent, name = key.rsplit("/", 1)
        path = reference / parent / f"{name}.{digest[:12]}.json"
        doc = read_sa1b(path)
        write_sa1b(tmp_path / "rewritten.json", doc)  # the runner's bytes are exactly what write_sa1b writes
        assert (tmp_path / "rewritten.json").read_bytes() == path.read_bytes()
        h, w = np.asarray(Image.open(inp / key)).shape[:2]
        assert (doc.image.height, doc.image.width, doc.image.file_name) == (h, w, key)
        assert doc.image.image_id == int(digest[:12], 16)
        seen_masks += len(doc.annotations)
        overlay = np.asarray(Image.open(reference / parent / f"{name}.{digest[:12]}.overlay.png"))
        assert overlay.shape == (h, w, 3)
    assert seen_masks > 0
    failures = [json.loads(line) for line in (reference / batch.FAILURES_NAME).read_text().splitlines()]
    assert {f["input"]: f["error"] for f in failures} == POISON
    assert [f["input"] for f in failures] == sorted(POISON)
    assert all(f["message"] and len(f["sha256"]) == 64 for f in failures)
    summary = json.loads((reference / batch.SUMMARY_NAME).read_text())
    n_ok = sum(s == "ok" for s in expected.values())
    assert (summary["inputs"], summary["done"], summary["failed"]) == (len(expected), n_ok, len(POISON))
    assert summary["missing"] == []
    assert not [p for p in reference.rglob(f"*{batch.TMP_SUFFIX}")]


def test_rerun_skips_done_items_and_rereports_failures(job_inputs, reference: Path, tmp_path: Path) -> None:
    inp, ckpt, expected = job_inputs
    out = tmp_path / "out"
    shutil.copytree(reference, out)  # copy2: keeps mtimes
    before = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    summary = _run(_options(inp, out, ckpt, overlay=True))
    assert summary.skipped_done == sum(s == "ok" for s in expected.values())
    assert summary.processed_this_run == len(POISON)  # failed inputs are retried, and fail again
    assert summary.exit_code == batch.EXIT_FAILURES
    assert snapshot(out) == before
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items() if p.name not in (batch.SUMMARY_NAME,))


def test_cli_resume_repairs_damage_and_adds_overlays(job_inputs, reference: Path, tmp_path: Path) -> None:
    from segany.cli import auto

    inp, ckpt, _ = job_inputs
    out = tmp_path / "out"
    parser = __import__("argparse").ArgumentParser()
    auto.add_parser(parser.add_subparsers())
    argv = [
        "auto",
        str(inp),
        "--out",
        str(out),
        "--model",
        "tiny",
        "--checkpoint",
        str(ckpt),
        "--no-progress",
    ]
    assert auto.run(parser.parse_args([*argv, *GENERATOR_FLAGS])) == batch.EXIT_FAILURES
    assert not list(out.rglob("*.overlay.png"))
    # damage: a truncated final file, a stale temp file, a deleted output
    jsons = sorted(p for p in out.rglob("img*.json"))
    jsons[0].write_bytes(jsons[0].read_bytes()[:10])
    jsons[1].unlink()
    (jsons[2].parent / f".{jsons[2].name}.x{batch.TMP_SUFFIX}").write_bytes(b"{")
    assert auto.run(parser.parse_args([*argv, *GENERATOR_FLAGS, "--overlay"])) == batch.EXIT_FAILURES
    assert snapshot(out) == snapshot(reference)


def test_foreign_job_and_concurrent_run_are_refused(job_inputs, reference: Path, tmp_path: Path) -> None:
    inp, ckpt, _ = job_inputs
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    with pytest.raises(batch.BatchError, match="another job"):
        _run(_options(inp, out, ckpt, points_per_side=4))
    other = save_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(batch.BatchError, match="another job"):
        _run(_options(inp, out, other))
    fd = os.open(out / batch.LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(batch.BatchError, match="another segany auto run"):
            _run(_options(inp, out, ckpt))
    finally:
        os.close(fd)


class _DroppingEngine:
    """The real local engine, except that it silently loses one image (a buggy or lossy engine)."""

    def __init__(self, inner: batch.LocalEngine, drop: str) -> None:
        self.inner, self.drop = inner, drop

    def start(self) -> batch.Runtime:
        return self.inner.start()

    def run(self, payloads: Iterable[batch.Payload]) -> Iterator[batch.ItemResult]:
        return self.inner.run(p for p in payloads if p.key != self.drop)

    def close(self) -> None:
        self.inner.close()


def test_reconciliation_gap_is_a_hard_error(job_inputs, tmp_path: Path) -> None:
    inp, ckpt, expected = job_inputs
    opts = _options(inp, tmp_path / "out", ckpt)
    lost = next(k for k, s in expected.items() if s == "ok")
    summary = batch.run_job(opts, _DroppingEngine(batch.LocalEngine(opts.model, opts.generator_kwargs), lost))
    assert summary.missing == [lost]
    assert summary.exit_code == batch.EXIT_GAP
    assert json.loads((tmp_path / "out" / batch.SUMMARY_NAME).read_text())["missing"] == [lost]


def test_discover_inputs_list_files_and_exclusions(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("x.jpg", "a/y.png", "a/b/z.png", ".hidden.png", "a/.cache/w.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"1")
    (root / "a" / "b" / "loop").symlink_to(root)  # a symlink loop is walked once, not forever
    (root / "out").mkdir()
    (root / "out" / "o.json").write_bytes(b"{}")
    keys = [it.key for it in batch.discover_inputs(root, exclude=root / "out")]
    assert keys == ["a/b/z.png", "a/y.png", "x.jpg"]

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"2")
    lst = root / "list.txt"
    lst.write_text("# comment\nx.jpg\n\n  a/y.png  \n../elsewhere.png\n")
    items = batch.discover_inputs(lst)
    assert [it.key for it in items] == ["../elsewhere.png", "a/y.png", "x.jpg"]
    assert items[0].path == outside.resolve()
    lst.write_text("x.jpg\n./x.jpg\n")
    with pytest.raises(batch.BatchError, match="twice"):
        batch.discover_inputs(lst)
    assert [it.key for it in batch.discover_inputs(root / "x.jpg")] == ["x.jpg"]
    with pytest.raises(batch.BatchError):
        batch.discover_inputs(tmp_path / "missing")


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "f.json"
    batch.atomic_write(target, b"first")
    batch.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]

    with pytest.raises(TypeError):  # a write that fails midway leaves the old file and no temp file
        batch.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_generator_kwargs_resolution() -> None:
    kwargs = batch.resolve_generator_kwargs(None, {"points_per_side": 8})
    # None: the model's own recommended filters (its checkpoint metadata), else the official 0.88 / 0.95
    assert kwargs["points_per_side"] == 8 and kwargs["pred_iou_thresh"] is None
    assert "output_mode" not in kwargs and "point_grids" not in kwargs
    with pytest.raises(batch.BatchError, match="unknown generator parameter"):
        batch.resolve_generator_kwargs(None, {"points_per_sid": 8})
    with pytest.raises(batch.BatchError, match="unknown preset"):
        batch.resolve_generator_kwargs("nope", {})
    sa1b = batch.resolve_generator_kwargs("sa1b", {})
    assert sa1b["crop_n_layers"] == 2 and sa1b["min_mask_region_area"] == 100
    assert batch.resolve_generator_kwargs("sa1b", {"crop_n_layers": 1})["crop_n_layers"] == 1


def test_cli_warns_with_the_reason_when_an_image_yields_no_mask(tmp_path: Path, capsys) -> None:
    from segany.cli import main

    make_inputs(tmp_path / "in", n_good=2, poison=False)
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    args = ["auto", str(tmp_path / "in"), "--model", "tiny"]
    args += ["--checkpoint", str(ckpt), "--no-progress", "--points-per-side", "2"]
    code = main([*args, "--out", str(tmp_path / "out"), "--pred-iou-thresh", "5"])  # no IoU can pass
    err = capsys.readouterr().err
    assert code == 0
    assert "2 images yielded no mask" in err
    assert "predicted IoU above pred_iou_thresh 5 (highest: " in err and "lower --pred-iou-thresh" in err
    code = main(
        [*args, "--out", str(tmp_path / "o2"), "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    )
    assert code == 0 and "yielded no mask" not in capsys.readouterr().err
