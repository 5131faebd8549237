"""`segany eval` end to end on the tiny model (random weights) and tiny datasets: files written, numbers sane."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate_coco import write_coco

from segany.cli import main

H, W = 48, 64


def write_folder_benchmark(root: Path, more: tuple[str, ...] = ()) -> Path:
    """GrabCut-like folder: images of mixed extensions, masks 0 / 128 (ignore band) / 255; ``more`` adds stems."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for stem, ext in (("a", ".jpg"), ("b", ".BMP")) + tuple((m, ".png") for m in more):
        Image.fromarray(rng.integers(0, 255, (H, W, 3)).astype(np.uint8)).save(
            root / "images" / f"{stem}{ext}"
        )
        m = np.zeros((H, W), np.uint8)
        m[8:30, 10:40] = 128
        m[10:28, 12:38] = 255
        Image.fromarray(m).save(root / "masks" / f"{stem}.png")
    return root


def write_bsds(root: Path) -> Path:
    images = root / "images" / "test"
    images.mkdir(parents=True)
    gt = root / "groundtruth_png" / "test"
    (gt / "boundaries").mkdir(parents=True)
    (gt / "segmentation").mkdir(parents=True)
    img = np.zeros((H, W, 3), np.uint8)
    img[:, 30:] = 220
    Image.fromarray(img).save(images / "1.jpg")
    for k, col in enumerate((29, 29)):  # Canny puts this step edge at column 29
        seg = np.ones((H, W), np.uint16)
        seg[:, col + 1 :] = 2
        b = np.zeros((H, W), np.uint8)
        b[:, col] = 255
        Image.fromarray(seg).save(gt / "segmentation" / f"1_{k}.png")
        Image.fromarray(b).save(gt / "boundaries" / f"1_{k}.png")
    (root / "overlap_with_interactive_benchmarks.txt").write_text("")
    return root


def _run(*argv: str) -> int:
    return main(["eval", *argv, "--model", "tiny", "--no-progress"])


def test_eval_points_end_to_end(tmp_path, capsys):
    data = write_folder_benchmark(tmp_path / "bench")
    out = tmp_path / "out"
    assert _run("points", "--data", str(data), "--out", str(out), "--limit", "1", "--max-clicks", "3") == 0
    payload = json.loads((out / "points.json").read_text())
    s = payload["datasets"]["bench"]
    assert s["num_images"] == 1 and s["num_instances"] == 1 and len(s["miou_at_k"]) == 3
    assert 0 <= s["miou_1_auto"] <= s["miou_1_oracle"] <= 1
    assert 1 <= s["noc_85_max3"] <= 3 and 0 <= s["grabcut_miou"] <= 1
    assert "noc_85" not in s  # capped at 3 clicks: not to be read as the standard NoC (20 clicks)
    assert payload["meta"]["model"] == "tiny" and payload["meta"]["segany_version"]
    for name in ("points.md", "points_miou_curve.png", "points_bench_examples.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| bench | 1 |" in printed
    assert "NoC@85 (≤3 clicks) | NoC@90 (≤3 clicks)" in printed
    # the tiny model's weights are random, not shipped ones
    assert "random weights" in printed and "built-in" not in printed
    assert payload["meta"]["weights"] == "random weights, untrained"


def test_eval_points_same_folder_names_and_spread_limit(tmp_path):
    """Two folders both named ``val`` keep their own results; --limit spreads over the sorted images."""
    a = write_folder_benchmark(tmp_path / "a" / "val", more=("c", "d"))  # images a, b, c, d
    b = write_folder_benchmark(tmp_path / "b" / "val")
    out = tmp_path / "out"
    argv = ("--out", str(out), "--limit", "2", "--max-clicks", "1", "--no-grabcut")
    assert _run("points", "--data", str(a), str(b), *argv) == 0
    datasets = json.loads((out / "points.json").read_text())["datasets"]
    assert list(datasets) == ["a/val", "b/val"]
    assert datasets["a/val"]["path"] == str(a) and datasets["b/val"]["path"] == str(b)
    # 2 of the 4 sorted images, evenly spaced: a and c, not the first two (a and b)
    assert [o["object"] for o in datasets["a/val"]["per_object"]] == ["val/a#0", "val/c#0"]
    assert [o["object"] for o in datasets["b/val"]["per_object"]] == ["val/a#0", "val/b#0"]
    for name in ("points_a_val_examples.png", "points_b_val_examples.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "points.md").read_text()
    assert "| a/val | 2 |" in md and "| b/val | 2 |" in md


def test_dataset_names_and_spread_indices(tmp_path):
    from segany.evaluate.runs import dataset_names, spread_indices

    for d in ("x/a/val", "y/a/val", "z/test", "val"):
        (tmp_path / d).mkdir(parents=True)
    paths = [tmp_path / d for d in ("x/a/val", "y/a/val", "z/test", "val")]
    assert dataset_names(paths) == ["x/a/val", "y/a/val", "test", f"{tmp_path.name}/val"]
    assert dataset_names([tmp_path / "z/test", tmp_path / "z" / ".." / "z/test"]) == ["test", "test (2)"]
    assert dataset_names([tmp_path / "val"]) == ["val"]
    assert spread_indices(10, None) == list(range(10)) and spread_indices(3, 5) == [0, 1, 2]
    assert spread_indices(10, 1) == [0]
    assert spread_indices(10, 4) == [0, 2, 5, 7]
    assert spread_indices(1000, 10) == list(range(0, 1000, 100))


def test_eval_points_reads_instance_id_maps(tmp_path):
    """--mask-kind labels: one VOC-style id map per image, 255 ignored for every object."""
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3)).astype(np.uint8)).save(
        root / "images" / "a.jpg"
    )
    ids = np.zeros((H, W), np.uint8)
    ids[5:20, 5:20], ids[25:40, 30:55], ids[4, :] = 1, 2, 255
    Image.fromarray(ids).save(root / "masks" / "a.png")
    out = tmp_path / "out"
    argv = ("points", "--data", str(root), "--out", str(out), "--max-clicks", "2", "--no-grabcut")
    assert _run(*argv, "--mask-kind", "labels", "--ignore-label", "255") == 0
    s = json.loads((out / "points.json").read_text())["datasets"]["voc"]
    assert s["num_instances"] == 2  # objects 1 and 2; 255 is no object
    assert _run(*argv) == 0  # read as one binary mask: everything non-zero is one object
    assert json.loads((out / "points.json").read_text())["datasets"]["voc"]["num_instances"] == 1


def test_eval_edges_end_to_end(tmp_path):
    data = write_bsds(tmp_path / "bsds")
    out = tmp_path / "out"
    assert _run("edges", "--data", str(data), "--out", str(out), "--points-per-side", "2") == 0
    payload = json.loads((out / "edges.json").read_text())
    canny = payload["results"]["canny"]
    assert canny["ods"] > 0.9  # a clean step edge, drawn at its place by both annotators
    assert 0 <= payload["results"]["model"]["ods"] <= 1
    assert (out / "edges_pr.png").stat().st_size > 0 and (out / "edges_examples.png").stat().st_size > 0


def test_eval_proposals_and_instances_end_to_end(tmp_path):
    write_coco(tmp_path / "coco")
    out = tmp_path / "out"
    data = str(tmp_path / "coco")
    assert _run("proposals", "--data", data, "--out", str(out), "--limit", "1", "--points-per-side", "2") == 0
    payload = json.loads((out / "proposals.json").read_text())
    assert payload["num_images"] == 1 and payload["protocol"]["generator"]["box_nms_thresh"] == 0.9
    assert payload["results"]["ground_truth_masks (sanity)"]["ar_1000"] == pytest.approx(1.0)
    assert 0 <= payload["results"]["model"]["ar_1000"] <= 1

    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9}]))
    assert _run("instances", "--data", data, "--out", str(out), "--detections", str(dets)) == 0
    payload = json.loads((out / "instances.json").read_text())
    assert payload["num_boxes"] == 1 and payload["num_images"] == 2
    assert 0 <= payload["results"]["ap"] <= 1 and (out / "instances.md").is_file()


def test_eval_usage_errors(tmp_path, capsys):
    assert _run("edges", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")) == 2
    assert _run("points", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--limit", "0") == 2
    assert "--limit" in capsys.readouterr().err


def test_only_best_and_worst_cases_keep_their_masks():
    from segany.evaluate.runs import _extremes, _keep_extreme_masks

    cases = []
    for k, iou in enumerate([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6]):
        cases.append({"iou": iou, "mask": np.full((2, 2), k)})
        _keep_extreme_masks(cases)
    kept = sorted(c["iou"] for c in cases if c["mask"] is not None)
    assert kept == [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    assert [c["iou"] for c in _extremes(cases)] == [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
