"""The validation split of the training folders (`segany.data.split`): the figures that choose a model's
settings, measured on images it never trained on and never on the benchmarks.

Four measurements, network alone (no post-process):

* **clicks** — the benchmarks' click protocol (`segany.evaluate.clicks.run_clicks`) on held-out objects,
  mIoU@1..K;
* **calibration** — on the protocol's first click, each of the three masks' predicted IoU against its actual
  IoU: mean absolute error, Spearman's rho, and how often the top-scored mask is the best of the three;
* **whole/part** — clicks on garments and body parts of held-out CCP people: how often the three masks hold both
  the part and the whole person (IoU >= 0.5, two different masks), and how often the top-scored mask is one
  of them;
* **background click** — after the first click, one negative click on the background near the object (the
  interior-most background pixel of the object's box grown as training grows it, `background_points`): the mask
  must not shrink;
  the mean IoU before and after, and how often it falls by more than 0.05;
* **automatic** — the generator's candidates (every grid point's three masks, no filter) on held-out images
  whose folders annotate every object or region (COCO, MSRC, BSDS500): masks per image and matched precision /
  recall for each pair of (predicted-IoU, stability) thresholds, the pair with the best F1 — what a model
  carries as its `generator_defaults` — and the proposal AR@100 / AR@1000 of the candidates ranked as the paper
  ranks proposals.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segany.data.sample import Sample
from segany.evaluate.clicks import interior_point, mask_iou, run_clicks

# folders whose annotations cover every object/region of an image: unmatched generator masks there are (mostly)
# real false positives, so precision means something
COMPLETE_FOLDERS = ("coco_subsets", "msrc_v2", "bsds500")
TRAINING_FOLDERS = ("coco_subsets", "bsds500", "dsb2018_nuclei", "duts_tr", "msrc_v2", "ccp_parts")
IOU_GRID = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9)
STABILITY_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
MATCH_IOU = 0.5
MIN_COVERAGE = 0.95  # share of images on which the chosen generator filters must leave a mask


def validation_samples(folder: str | Path, fraction: float) -> Iterator[Sample]:
    """The held-out samples of one training folder (BSDS500: the first annotator of each held-out image)."""
    from segany.data.mixed import open_source
    from segany.data.split import is_validation

    reader = open_source(folder, for_training=True)
    for i in range(len(reader)):
        sample = reader[i]
        if "#" in sample.source and not sample.source.endswith("#0"):
            continue
        if is_validation(sample.source, fraction):
            yield sample


def pick_objects(sample: Sample, per_image: int, min_fraction: float, seed: int) -> list[int]:
    """Indices of up to ``per_image`` masks of at least ``min_fraction`` of the image, chosen by a seeded draw."""
    areas = sample.masks.reshape(len(sample.masks), -1).mean(1)
    ok = np.flatnonzero((areas >= min_fraction) & (areas <= 0.9))
    rng = np.random.default_rng([seed, len(sample.source), sum(sample.source.encode())])
    return sorted(rng.choice(ok, size=min(per_image, len(ok)), replace=False).tolist()) if len(ok) else []


@dataclass
class FirstClick:
    """The three answers to the protocol's first click on one object."""

    predicted: np.ndarray  # [3] predicted IoU
    actual: np.ndarray  # [3] actual IoU with the object


@dataclass
class ValidationReport:
    clicks: list[np.ndarray] = field(default_factory=list)  # per object: IoU after clicks 1..K
    first: list[FirstClick] = field(default_factory=list)
    whole_part: list[dict[str, Any]] = field(default_factory=list)
    background: list[tuple[float, float]] = field(
        default_factory=list
    )  # IoU before / after a background click
    auto: dict[str, Any] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)  # held-out images used, per folder

    def summary(self) -> dict[str, Any]:
        from scipy.stats import spearmanr

        out: dict[str, Any] = {"images": dict(self.images)}
        if self.clicks:
            curve = np.mean(self.clicks, axis=0)
            out["objects"] = len(self.clicks)
            out["miou"] = [round(float(v), 4) for v in curve]
            out["max_drop"] = round(float(max(0.0, *(curve[:-1] - curve[1:]))) if len(curve) > 1 else 0.0, 4)
        if self.first:
            pred = np.concatenate([f.predicted for f in self.first])
            act = np.concatenate([f.actual for f in self.first])
            top = [f.actual[int(np.argmax(f.predicted))] for f in self.first]
            best = [f.actual.max() for f in self.first]
            rho = spearmanr(pred, act).statistic
            out["calibration"] = {
                "masks": len(pred),
                "iou_mae": round(float(np.abs(pred - act).mean()), 4),
                "spearman_rho": round(float(rho), 4) if np.isfinite(rho) else None,
                "mean_predicted": round(float(pred.mean()), 4),
                "mean_actual": round(float(act.mean()), 4),
                "max_predicted": round(float(pred.max()), 4),
                "top_is_best_rate": round(
                    float(np.mean([t >= b - 1e-9 for t, b in zip(top, best, strict=True)])), 4
                ),
                "miou_1_top": round(float(np.mean(top)), 4),
                "miou_1_best_of_3": round(float(np.mean(best)), 4),
            }
        if self.whole_part:
            wp = self.whole_part
            out["whole_part"] = {
                "clicks": len(wp),
                "both_found_rate": round(float(np.mean([w["both"] for w in wp])), 4),
                "part_found_rate": round(float(np.mean([w["part"] for w in wp])), 4),
                "person_found_rate": round(float(np.mean([w["person"] for w in wp])), 4),
                "top_is_one_rate": round(float(np.mean([w["top_is_one"] for w in wp])), 4),
            }
        if self.background:
            before, after = np.array(self.background).T
            out["background_click"] = {
                "objects": len(before),
                "miou_before": round(float(before.mean()), 4),
                "miou_after": round(float(after.mean()), 4),
                "fell_by_0.05_rate": round(float(np.mean(after < before - 0.05)), 4),
            }
        if self.auto:
            out["automatic"] = self.auto
        return out


def first_click(predictor: Any, gt: np.ndarray) -> FirstClick:
    """The protocol's first click (the object's interior-most pixel), three masks, network alone."""
    xy = interior_point(gt)
    assert xy is not None
    masks, scores, _ = predictor.predict(
        point_coords=np.array([xy], dtype=np.float64), point_labels=np.array([1]), multimask_output=True
    )
    actual = np.array([mask_iou(m, gt) for m in masks])
    return FirstClick(predicted=np.asarray(scores, dtype=np.float64), actual=actual)


def background_click(predictor: Any, gt: np.ndarray) -> tuple[float, float] | None:
    """IoU of the first click's top-scored mask, and of the answer once a negative click is added on the
    background near the object (previous logits fed back, as the click protocol does); None if the grown box
    holds no background."""
    from segany.train.prompts import BACKGROUND_MARGIN_FRACTION, BACKGROUND_MARGIN_PX

    ys, xs = np.nonzero(gt)
    my, mx = (
        int((ys.max() - ys.min() + 1) * BACKGROUND_MARGIN_FRACTION) + BACKGROUND_MARGIN_PX,
        int((xs.max() - xs.min() + 1) * BACKGROUND_MARGIN_FRACTION) + BACKGROUND_MARGIN_PX,
    )
    ring = np.zeros_like(gt)
    ring[max(0, ys.min() - my) : ys.max() + my + 1, max(0, xs.min() - mx) : xs.max() + mx + 1] = True
    ring &= ~gt
    bg = interior_point(ring)
    fg = interior_point(gt)
    if bg is None or fg is None:
        return None
    masks, scores, logits = predictor.predict(
        point_coords=np.array([fg], dtype=np.float64), point_labels=np.array([1]), multimask_output=True
    )
    top = int(np.argmax(scores))
    before = mask_iou(masks[top], gt)
    masks, _, _ = predictor.predict(
        point_coords=np.array([fg, bg], dtype=np.float64),
        point_labels=np.array([1, 0]),
        mask_input=logits[top][None],
        multimask_output=False,
    )
    return before, mask_iou(masks[0], gt)


def whole_part_clicks(predictor: Any, sample: Sample, min_fraction: float = 0.01) -> list[dict[str, Any]]:
    """Clicks on the parts of one CCP sample (mask 0 the person, the rest its pieces), already set in the
    predictor: for each part, whether the three masks hold the part and the person (two different masks)."""
    person = sample.masks[0]
    out = []
    for part in sample.masks[1:]:
        if part.mean() < min_fraction or mask_iou(part, person) >= 0.8:
            continue
        xy = interior_point(part)
        assert xy is not None
        masks, scores, _ = predictor.predict(
            point_coords=np.array([xy], dtype=np.float64), point_labels=np.array([1]), multimask_output=True
        )
        ip = np.array([mask_iou(m, part) for m in masks])
        iw = np.array([mask_iou(m, person) for m in masks])
        both = any(ip[i] >= MATCH_IOU and iw[j] >= MATCH_IOU for i in range(3) for j in range(3) if i != j)
        top = int(np.argmax(scores))
        out.append(
            {
                "source": sample.source,
                "both": bool(both),
                "part": bool(ip.max() >= MATCH_IOU),
                "person": bool(iw.max() >= MATCH_IOU),
                "top_is_one": bool(max(ip[top], iw[top]) >= MATCH_IOU),
            }
        )
    return out


def _rle_of(masks: np.ndarray) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    return list(mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))))


def _nms_xywh(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Indices kept by box NMS over XYWH boxes (the generator records' ``bbox``), best score first."""
    import torch

    from segany.masks.boxes import box_xywh_to_xyxy, nms

    xyxy = box_xywh_to_xyxy(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    return nms(xyxy, torch.as_tensor(scores, dtype=torch.float32), thresh).numpy()


def _greedy_matches(ious: np.ndarray, order: np.ndarray, thr: float) -> int:
    """Detections (rows, visited in ``order``) matched one-to-one to ground truths (columns) at IoU >= thr."""
    taken = np.zeros(ious.shape[1], dtype=bool)
    hits = 0
    for d in order:
        cand = np.where(~taken & (ious[d] >= thr), ious[d], -1.0)
        g = int(np.argmax(cand)) if cand.size else -1
        if g >= 0 and cand[g] >= thr:
            taken[g] = True
            hits += 1
    return hits


def threshold_table(
    candidates: Sequence[dict[str, Any]],
    nms_thresh: float = 0.7,
    iou_grid: Sequence[float] = IOU_GRID,
    stability_grid: Sequence[float] = STABILITY_GRID,
) -> list[dict[str, float]]:
    """Per (pred_iou_thresh, stability_score_thresh): masks per image, precision, recall and F1 at IoU 0.5 after
    the generator's filters and its box NMS, over images given as ``{"pred": [M], "stab": [M], "boxes": [M, 4]
    XYWH, "ious": [M, G] IoU with the ground truth}``."""
    rows = []
    for ti, ts in itertools.product(iou_grid, stability_grid):
        kept = hits = gts = covered = 0
        for c in candidates:
            keep = np.flatnonzero((c["pred"] > ti) & (c["stab"] >= ts))
            gts += c["ious"].shape[1]
            if not len(keep):
                continue
            covered += 1
            survivors = keep[_nms_xywh(c["boxes"][keep], c["pred"][keep], nms_thresh)]
            kept += len(survivors)
            order = survivors[np.argsort(-c["pred"][survivors], kind="stable")]
            hits += _greedy_matches(c["ious"], order, MATCH_IOU)
        p = hits / kept if kept else 0.0
        r = hits / gts if gts else 0.0
        rows.append(
            {
                "pred_iou_thresh": ti,
                "stability_score_thresh": ts,
                "masks_per_image": kept / max(len(candidates), 1),
                "images_with_masks": covered / max(len(candidates), 1),
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0,
            }
        )
    return rows


def choose_generator_defaults(
    table: Sequence[dict[str, float]], coverage: float = MIN_COVERAGE
) -> dict[str, float]:
    """The row with the best F1 among those that leave at least one mask on ``coverage`` of the images.

    The best F1 alone can sit just above the predicted IoU of every candidate of many images: the generator
    then returns nothing there, which a user reads as "broken", not as "precise". When no row covers enough
    images, the best F1 overall."""

    def key(r: dict[str, float]) -> tuple[float, float, float]:
        return (round(r["f1"], 6), r["pred_iou_thresh"], r["stability_score_thresh"])

    covering = [r for r in table if r.get("images_with_masks", 1.0) >= coverage]
    return max(covering or table, key=key)


def automatic_candidates(generator: Any, sample: Sample) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every unfiltered candidate of the generator on one image, with its IoU against the ground truth, and the
    generator's records (coco_rle) for the proposal AR."""
    from pycocotools import mask as mask_utils

    records = generator.generate(sample.image)
    gt = _rle_of(sample.masks)
    dt = [r["segmentation"] for r in records]
    ious = (
        np.asarray(mask_utils.iou(dt, gt, [0] * len(gt)), dtype=np.float64).reshape(len(dt), len(gt))
        if dt and gt
        else np.zeros((len(dt), len(gt)))
    )
    cand = {
        "gt_rle": gt,
        "pred": np.array([r["predicted_iou"] for r in records], dtype=np.float64),
        "stab": np.array([r["stability_score"] for r in records], dtype=np.float64),
        "boxes": np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4),
        "ious": ious,
    }
    return cand, records


def proposal_ar(
    images_records: Sequence[tuple[tuple[int, int], list[dict[str, Any]], list[dict[str, Any]]]],
) -> dict[str, float]:
    """AR@10/100/1000 (pycocotools, class-agnostic) of records ranked as the paper ranks proposals (box NMS 0.9,
    mean of predicted IoU and stability), per image ``((H, W), ground-truth RLEs, generator records)``."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from segany.evaluate.proposals import evaluate_proposals, proposal_results, rank_proposals

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, ((h, w), gt, recs) in enumerate(images_records, start=1):
        images.append({"id": i, "height": h, "width": w})
        for r in gt:
            seg = {"size": r["size"], "counts": r["counts"].decode("ascii")}
            area = float(mask_utils.area(r))
            bbox = [float(v) for v in mask_utils.toBbox(r)]
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": seg, "area": area}
                | {"bbox": bbox, "iscrowd": 0}
            )
        if recs:
            score = np.array([(r["predicted_iou"] + r["stability_score"]) / 2 for r in recs])
            recs = [recs[k] for k in _nms_xywh(np.array([r["bbox"] for r in recs]), score, 0.9)]
        results += proposal_results(i, rank_proposals(recs))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return evaluate_proposals(coco, results, [im["id"] for im in images])


def run_validation(
    model: Any,
    data_root: str | Path,
    folders: Sequence[str],
    fraction: float,
    *,
    max_clicks: int = 5,
    objects_per_image: int = 2,
    min_object_fraction: float = 0.005,
    auto_images: int = 40,
    points_per_side: int = 32,
    seed: int = 0,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """All four measurements on the held-out images of ``folders`` (names under ``data_root``)."""
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.predictor import SamPredictor

    predictor = SamPredictor(model, refiner=False)
    report = ValidationReport()
    auto_pool: list[Sample] = []
    for name in folders:
        n = 0
        for sample in validation_samples(Path(data_root) / name, fraction):
            if not len(sample.masks):
                continue
            if limit is not None and n >= limit:
                break
            n += 1
            predictor.set_image(sample.image)
            if name == "ccp_parts":
                report.whole_part += whole_part_clicks(predictor, sample)
            for j in pick_objects(sample, objects_per_image, min_object_fraction, seed):
                gt = sample.masks[j]
                report.first.append(first_click(predictor, gt))
                report.clicks.append(run_clicks(predictor, gt, None, max_clicks).ious)
                bg = background_click(predictor, gt)
                if bg is not None:
                    report.background.append(bg)
            if name in COMPLETE_FOLDERS:
                auto_pool.append(sample)
            if progress is not None:
                progress(f"{name}: {n} images")
        report.images[name] = n
    if auto_images > 0 and auto_pool:
        rng = np.random.default_rng(seed)
        chosen = [
            auto_pool[i] for i in sorted(rng.choice(len(auto_pool), min(auto_images, len(auto_pool)), False))
        ]
        gen = SamAutomaticMaskGenerator(
            model,
            points_per_side=points_per_side,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            box_nms_thresh=1.0,  # no NMS here: `threshold_table` applies it after each pair of filters
            output_mode="coco_rle",
        )
        cands, pairs = [], []
        for k, s in enumerate(chosen):
            c, recs = automatic_candidates(gen, s)
            cands.append(c)
            pairs.append(((s.height, s.width), c["gt_rle"], recs))
            if progress is not None:
                progress(f"automatic: {k + 1}/{len(chosen)} images")
        table = threshold_table(cands)
        best = choose_generator_defaults(table)
        official = next(
            r for r in table if r["pred_iou_thresh"] == 0.88 and r["stability_score_thresh"] == 0.95
        )
        report.auto = {
            "images": len(chosen),
            "points_per_side": points_per_side,
            "chosen": {k: round(v, 4) for k, v in best.items()},
            "official_defaults": {k: round(v, 4) for k, v in official.items()},
            "proposals": {k: round(v, 4) for k, v in proposal_ar(pairs).items()},
            "table": [{k: round(v, 4) for k, v in r.items()} for r in table],
        }
    return report


def write_report(report: ValidationReport, out: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``validation.json`` (every number, the full threshold table, ``meta``) and ``validation.md`` (the summary
    as tables) in ``out``; returns the JSON payload."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.summary()
    payload = {"meta": meta, "summary": summary}
    (out / "validation.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [f"# Validation split ({', '.join(f'{k} {v}' for k, v in summary['images'].items())} images)", ""]
    if "miou" in summary:
        k = len(summary["miou"])
        lines += [
            f"Click protocol, {summary['objects']} objects (network alone): "
            + ", ".join(f"mIoU@{i + 1} {v:.3f}" for i, v in enumerate(summary["miou"][:k]))
            + f"; largest fall from one click to the next {summary['max_drop']:.3f}",
            "",
        ]
    if "calibration" in summary:
        c = summary["calibration"]
        lines += [
            "| IoU head (first click, 3 masks each) | value |",
            "|---|---|",
            *[f"| {key} | {val} |" for key, val in c.items()],
            "",
        ]
    if "whole_part" in summary:
        lines += ["| whole/part (CCP clicks on parts) | value |", "|---|---|"]
        lines += [f"| {key} | {val} |" for key, val in summary["whole_part"].items()] + [""]
    if "background_click" in summary:
        lines += ["| background click near the object | value |", "|---|---|"]
        lines += [f"| {key} | {val} |" for key, val in summary["background_click"].items()] + [""]
    if "automatic" in summary:
        a = summary["automatic"]
        lines += [
            f"Automatic generator on {a['images']} images ({a['points_per_side']}x{a['points_per_side']} grid):",
            "",
            "| filters | pred_iou_thresh | stability_score_thresh | masks/image | precision@0.5 | recall@0.5 | F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in ("chosen", "official_defaults"):
            r = a[name]
            lines.append(
                f"| {name} | {r['pred_iou_thresh']} | {r['stability_score_thresh']} | {r['masks_per_image']:.1f} "
                f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |"
            )
        pr = a["proposals"]
        lines += [
            "",
            "Proposals (every candidate, ranked as the paper): "
            + ", ".join(f"{k} {v:.3f}" for k, v in pr.items()),
            "",
        ]
    (out / "validation.md").write_text("\n".join(lines))
    return payload
