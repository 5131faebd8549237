"""The four evaluations end to end: read data, run the model and baselines, write table, JSON and plots.

Each ``run_*`` writes ``<name>.md``, ``<name>.json`` and PNG plots into ``out`` and returns the JSON payload.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segany.evaluate import clicks as click_protocol
from segany.evaluate import edges as edge_bench
from segany.evaluate import instances as inst
from segany.evaluate import proposals as props
from segany.evaluate import report
from segany.evaluate.baselines import canny_soft_edges, grabcut_from_box, mask_box

T = TypeVar("T")
N_EXAMPLES = 3


def _progress(items: Iterable[T], total: int, desc: str, enabled: bool) -> Iterable[T]:
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def open_point_dataset(path: str | Path, mask_kind: str = "binary", ignore_label: int | None = None) -> Any:
    """A folder benchmark (``images/`` + ``masks/``), a COCO folder (``instances.json`` + ``images/``) or ADE20K.

    ``mask_kind`` and ``ignore_label`` are `MaskFolder`'s ``kind`` and ``ignore_label``: ``labels`` reads one
    instance-id map per image (VOC/SBD/DAVIS-style), with ``ignore_label`` (e.g. 255) ignored for every object.
    """
    from segany.data.ade20k import ADE20KFolder, looks_like_ade20k
    from segany.data.coco import CocoInstances
    from segany.data.folders import MaskFolder

    root = Path(path)
    if (root / "instances.json").is_file():
        return CocoInstances(root, for_training=False)
    if not (root / "masks").is_dir() and looks_like_ade20k(root):
        return ADE20KFolder(root)
    if mask_kind == "labels":
        return MaskFolder(root, kind="labels", ignore_label=ignore_label)
    if mask_kind != "binary":
        raise ValueError(f"mask kind must be 'binary' or 'labels', got {mask_kind!r}")
    return MaskFolder(root)


# ---------------------------------------------------------------------------------------------------- points


def dataset_names(paths: Sequence[str | Path]) -> list[str]:
    """Unique, readable result names for dataset folders: each folder's name, with as many parent folders as
    it takes to tell it from the others (``a/val`` and ``b/val``, not ``val`` twice); the same folder given
    twice gets `` (2)``."""
    parts = [Path(p).resolve().parts[1:] or (str(Path(p).resolve()),) for p in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(pt[-d:]) for pt, d in zip(parts, depth, strict=True)]
        folders: dict[str, set[tuple[str, ...]]] = {}
        for name, pt in zip(names, parts, strict=True):
            folders.setdefault(name, set()).add(pt)
        grow = [i for i, name in enumerate(names) if len(folders[name]) > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def _file_slugs(names: Sequence[str]) -> list[str]:
    """File-name-safe versions of unique names, still unique (``a/val`` -> ``a_val``)."""
    slugs: list[str] = []
    for name in names:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"
        base, k = slug, 2
        while slug in slugs:
            slug, k = f"{base}_{k}", k + 1
        slugs.append(slug)
    return slugs


def spread_indices(total: int, limit: int | None) -> list[int]:
    """``limit`` indices evenly spaced over ``range(total)`` (all of them without a limit): a sorted dataset's
    first N items are often one kind of object (COCO-MVal sorted by name starts with airplanes)."""
    if limit is None or limit >= total:
        return list(range(total))
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return [i * total // limit for i in range(limit)]


def run_points(
    predictor: Any,
    datasets: Sequence[str | Path],
    out: Path,
    meta: dict[str, Any],
    limit: int | None = None,
    max_clicks: int = click_protocol.DEFAULT_MAX_CLICKS,
    grabcut: bool = True,
    progress: bool = True,
    mask_kind: str = "binary",
    ignore_label: int | None = None,
) -> dict[str, Any]:
    """Click protocol (``segany.evaluate.clicks``) on each dataset, with GrabCut-from-box alongside.

    Results are named by `dataset_names` (unique even for folders of the same name); ``limit`` takes that many
    images evenly spaced over each dataset's sorted list (`spread_indices`)."""
    per_dataset: dict[str, Any] = {}
    names = dataset_names(datasets)
    noc = {
        t: (click_protocol.noc_key(t, max_clicks), click_protocol.noc_label(t, max_clicks))
        for t in click_protocol.NOC_THRESHOLDS
    }
    for path, name, slug in zip(datasets, names, _file_slugs(names), strict=True):
        ds = open_point_dataset(path, mask_kind, ignore_label)
        indices = spread_indices(len(ds), limit)
        n = len(indices)
        results: list[click_protocol.InstanceResult] = []
        grabcut_ious: list[float] = []
        cases: list[dict[str, Any]] = []
        skipped = 0
        t0 = time.perf_counter()
        model_s = grabcut_s = 0.0
        for i in _progress(indices, n, f"points {name}", progress):
            sample = ds[i]
            if len(sample.masks) == 0:
                continue
            t = time.perf_counter()
            predictor.set_image(sample.image)
            model_s += time.perf_counter() - t
            for j in range(len(sample.masks)):
                gt = sample.masks[j]
                ignore = None if sample.ignore is None else sample.ignore[j]
                if not gt.any():
                    skipped += 1
                    continue
                t = time.perf_counter()
                res = click_protocol.run_clicks(predictor, gt, ignore, max_clicks)
                model_s += time.perf_counter() - t
                results.append(res)
                cases.append(
                    {
                        "source": f"{sample.source}#{j}",
                        "iou": float(res.ious[0]),
                        "index": (i, j),
                        "res": res,
                        "mask": res.first_mask,
                    }
                )
                res.first_mask = None  # only the best and worst cases keep their mask (memory on big sets)
                _keep_extreme_masks(cases)
                if grabcut:
                    t = time.perf_counter()
                    gc = grabcut_from_box(sample.image, mask_box(gt))
                    grabcut_s += time.perf_counter() - t
                    grabcut_ious.append(click_protocol.mask_iou(gc, gt, ignore))
        if not results:
            raise ValueError(f"{path}: no objects to evaluate")
        summary = click_protocol.summarize(results, max_clicks)
        for t, (key, _) in noc.items():  # a NoC capped below (or past) the standard 20 clicks says so
            summary[key] = summary.pop(f"noc_{round(t * 100)}")
        summary.update(
            path=str(path),
            num_images=n,
            skipped_empty_masks=skipped,
            seconds_total=time.perf_counter() - t0,
            seconds_model=model_s,
            seconds_per_instance_model=model_s / len(results),
        )
        if grabcut:
            summary.update(grabcut_miou=float(np.mean(grabcut_ious)), seconds_grabcut=grabcut_s)
        summary["per_object"] = [
            {
                "object": c["source"],
                "ious": [round(float(v), 6) for v in c["res"].ious],
                "oracle_iou_1": round(c["res"].oracle_iou, 6),
                "clicks": [[k.x, k.y, int(k.positive)] for k in c["res"].clicks],
                **({"grabcut_iou": round(grabcut_ious[n], 6)} if grabcut else {}),
            }
            for n, c in enumerate(cases)
        ]
        summary["examples_plot"] = f"points_{slug}_examples.png"
        per_dataset[name] = summary
        _click_overlays(ds, cases, out / summary["examples_plot"], name)

    payload = {"meta": meta, "protocol": _click_protocol_settings(max_clicks), "datasets": per_dataset}
    report.write_json(out / "points.json", payload)
    rows = []
    for name, s in per_dataset.items():
        at = s["miou_at_k"]
        rows.append(
            [name, s["num_instances"], s["miou_1_auto"], s["miou_1_oracle"]]
            + [at[k - 1] if k <= len(at) else float("nan") for k in (2, 3, 5, 9, 20)]
            + [s[key] for key, _ in noc.values()]
            + [s.get("grabcut_miou", float("nan")), s["seconds_per_instance_model"]]
        )
    headers = ["dataset", "objects", "mIoU@1 auto", "mIoU@1 oracle", "@2", "@3", "@5", "@9", "@20"]
    headers += [label for _, label in noc.values()] + ["GrabCut (box)", "s/object"]
    md = "# Point-to-mask evaluation\n\n" + _meta_lines(meta) + report.markdown_table(headers, rows)
    md += (
        "\nPlots: `points_miou_curve.png`, `points_<dataset>_examples.png` (worst and best 1-click cases).\n"
    )
    (out / "points.md").write_text(md)
    report.plot_click_curves(
        {k: v["miou_at_k"] for k, v in per_dataset.items()},
        {k: v["grabcut_miou"] for k, v in per_dataset.items() if "grabcut_miou" in v},
        out / "points_miou_curve.png",
    )
    return payload


def _click_protocol_settings(max_clicks: int) -> dict[str, Any]:
    return {
        "max_clicks": max_clicks,
        "noc_thresholds": list(click_protocol.NOC_THRESHOLDS),
        "clicks": "RITM's clicker: exact EDT (1-px background padding) of the false negatives and of the false "
        "positives outside the ignore band, 0 on pixels clicked already; positive iff the FN maximum is larger "
        "(ties negative); the first pixel in row-major order at that maximum; no click once nothing is wrong",
        "first_click": "the clicker's click on an empty mask (interior-most GT pixel), multimask, "
        "auto = max predicted IoU",
        "next_clicks": "single-mask output; previous low-res logits as mask_input",
        "ignore_band": "excluded from IoU and error regions",
        "grabcut": "cv2.grabCut, 5 iterations, GC_INIT_WITH_RECT, tight inclusive GT box",
    }


def _extremes(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = sorted(cases, key=lambda c: c["iou"])
    return ranked[:N_EXAMPLES] + ranked[-N_EXAMPLES:] if len(ranked) > 2 * N_EXAMPLES else ranked


def _keep_extreme_masks(cases: list[dict[str, Any]]) -> None:
    keep = {id(c) for c in _extremes(cases)}
    for c in cases:
        if id(c) not in keep:
            c["mask"] = None


def _click_overlays(ds: Any, cases: list[dict[str, Any]], path: Path, name: str) -> None:
    chosen = _extremes(cases)
    shown = []
    for c in chosen:
        i, j = c["index"]
        sample = ds[i]
        click = c["res"].clicks[0]
        shown.append(
            {
                "image": sample.image,
                "mask": c["mask"],
                "gt": sample.masks[j],
                "clicks": [(click.x, click.y, True)],
                "label": f"{c['source']}  IoU@1 {c['iou']:.2f}",
            }
        )
    rows = "worst (top row) and best (bottom row)" if len(shown) > report.OVERLAY_COLUMNS else "worst to best"
    report.plot_overlays(
        shown, path, f"{name}: {rows} single-click masks (blue, outlined), GT outline (yellow)"
    )


# ---------------------------------------------------------------------------------------------------- edges


def _score_edges(job: tuple[np.ndarray, np.ndarray]) -> edge_bench.EdgeCounts:
    edge, gts = job
    return edge_bench.evaluate_edge_image(edge, list(gts))


def _parallel_map(fn: Callable[[Any], T], jobs: list[Any], workers: int) -> list[T]:
    if workers <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing

    # spawn, not fork: the parent holds torch (maybe CUDA) state that forked children must not inherit
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def run_edges(
    predictor: Any,
    root: str | Path,
    out: Path,
    meta: dict[str, Any],
    split: str = "test",
    limit: int | None = None,
    workers: int = 1,
    progress: bool = True,
    points_per_side: int = edge_bench.EDGE_POINTS_PER_SIDE,
) -> dict[str, Any]:
    """SAM edge maps and Canny on BSDS500 ``split``, both scored with the BSDS benchmark."""
    from segany.data.bsds import BSDSEdges

    ds = BSDSEdges(root, split=split)
    n = len(ds) if limit is None else min(limit, len(ds))
    model_counts: list[edge_bench.EdgeCounts] = []
    canny_counts: list[edge_bench.EdgeCounts] = []
    examples: list[dict[str, Any]] = []
    model_s = score_s = 0.0
    chunk = max(1, workers) * 4  # score in chunks so memory stays bounded on the full split
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for i in _progress(range(n), n, "edges", progress):
        sample = ds[i]
        t = time.perf_counter()
        edge = edge_bench.sam_edge_map(predictor, sample.image, points_per_side=points_per_side)
        model_s += time.perf_counter() - t
        canny = canny_soft_edges(sample.image)
        pending += [(edge, sample.boundaries), (canny, sample.boundaries)]
        if len(examples) < N_EXAMPLES:
            gt = sample.boundaries.mean(axis=0)
            examples.append(
                {"image": sample.image, "model": edge, "canny": canny, "gt": gt, "label": sample.image_id}
            )
        if len(pending) >= 2 * chunk or i == n - 1:
            t = time.perf_counter()
            scored = _parallel_map(_score_edges, pending, workers)
            score_s += time.perf_counter() - t
            model_counts += scored[0::2]
            canny_counts += scored[1::2]
            pending = []
    results = {
        "model": edge_bench.summarize_edges(model_counts),
        "canny": edge_bench.summarize_edges(canny_counts),
    }
    payload: dict[str, Any] = {
        "meta": meta,
        "protocol": {
            "split": split,
            "num_images": n,
            "thresholds": edge_bench.NUM_THRESHOLDS,
            "max_dist": edge_bench.MAX_DIST,
            "model_edges": f"{points_per_side}x{points_per_side} grid, 3 masks each, "
            f"no IoU/stability filter, box NMS {edge_bench.EDGE_NMS_THRESH}, Sobel on sigmoid(logits), "
            "outer boundary only, max, normalise, edge NMS",
            "canny": "soft map from cv2.Canny over 64 thresholds, Gaussian sigma 2",
            "seconds_model_per_image": model_s / max(n, 1),
            "seconds_scoring": score_s,
        },
        "results": results,
    }
    report.write_json(out / "edges.json", payload)
    rows = [[k, v["ods"], v["ois"], v["ap"], v["r50"]] for k, v in results.items()]
    md = "# Edge detection (BSDS500 " + split + ")\n\n" + _meta_lines(meta)
    md += report.markdown_table(["method", "ODS", "OIS", "AP", "R50"], rows)
    md += f"\n{n} images; model {model_s / max(n, 1):.2f} s/image; scoring {score_s:.1f} s total.\n"
    md += "Plots: `edges_pr.png`, `edges_examples.png`.\n"
    (out / "edges.md").write_text(md)
    report.plot_pr_curves(results, out / "edges_pr.png")
    report.plot_edge_examples(examples, out / "edges_examples.png")
    return payload


# ------------------------------------------------------------------------------------------ proposals / AP


def _coco(root: str | Path, annotations: str | None) -> tuple[Any, Path]:
    import contextlib
    import io

    from pycocotools.coco import COCO

    root = Path(root)
    ann = Path(annotations) if annotations else root / "instances.json"
    if not ann.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    return coco, root / "images"


def _coco_image_ids(coco: Any, limit: int | None) -> list[int]:
    ids = [i for i in sorted(coco.getImgIds()) if coco.imgToAnns.get(i)]
    return ids if limit is None else ids[:limit]


def run_proposals(
    model: Any,
    root: str | Path,
    out: Path,
    meta: dict[str, Any],
    annotations: str | None = None,
    limit: int | None = None,
    points_per_batch: int = 64,
    progress: bool = True,
    points_per_side: int | None = None,
) -> dict[str, Any]:
    """Mask AR@10/100/1000 of the automatic generator's proposals (paper settings; ``points_per_side``
    overrides the 64x64 grid, e.g. for quick checks)."""
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.images import load_image

    coco, image_dir = _coco(root, annotations)
    ids = _coco_image_ids(coco, limit)
    settings = dict(props.PROPOSAL_GENERATOR_SETTINGS)
    if points_per_side is not None:
        settings["points_per_side"] = points_per_side
    generator = SamAutomaticMaskGenerator(model, points_per_batch=points_per_batch, **settings)
    category = int(sorted(coco.getCatIds())[0]) if coco.getCatIds() else 1
    results: list[dict[str, Any]] = []
    n_masks = []
    t0 = time.perf_counter()
    for image_id in _progress(ids, len(ids), "proposals", progress):
        image = load_image(image_dir / coco.imgs[image_id]["file_name"])
        ranked = props.rank_proposals(generator.generate(image))
        n_masks.append(len(ranked))
        results += props.proposal_results(image_id, ranked, category)
    seconds = time.perf_counter() - t0
    metrics = props.evaluate_proposals(coco, results, ids)
    gt_metrics = props.evaluate_proposals(coco, _gt_as_results(coco, ids), ids)
    payload: dict[str, Any] = {
        "meta": meta,
        "protocol": {
            "generator": settings,
            "max_proposals": props.MAX_PROPOSALS,
            "ranking": "mean of predicted IoU and stability score",
            "cocoeval": {"iouType": "segm", "useCats": 0, "maxDets": props.AR_MAX_DETS},
        },
        "num_images": len(ids),
        "mean_proposals_per_image": float(np.mean(n_masks)) if n_masks else 0.0,
        "seconds_per_image": seconds / max(len(ids), 1),
        "results": {"model": metrics, "ground_truth_masks (sanity)": gt_metrics},
    }
    report.write_json(out / "proposals.json", payload)
    keys = list(metrics)
    rows = [[k] + [v[m] for m in keys] for k, v in payload["results"].items()]
    md = "# Object proposals (mask AR)\n\n" + _meta_lines(meta)
    md += report.markdown_table(
        ["masks", "AR@10", "AR@100", "AR@1000", "AR_S@1000", "AR_M@1000", "AR_L@1000"], rows
    )
    md += f"\n{len(ids)} images; {payload['mean_proposals_per_image']:.0f} proposals/image; "
    md += f"{payload['seconds_per_image']:.2f} s/image.\n"
    (out / "proposals.md").write_text(md)
    return payload


def _gt_as_results(coco: Any, ids: list[int]) -> list[dict[str, Any]]:
    out = []
    for i in ids:
        for a in coco.imgToAnns.get(i, []):
            if a.get("iscrowd", 0):
                continue
            rle = coco.annToRLE(a)
            if isinstance(rle["counts"], bytes):
                rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            out.append({"image_id": i, "category_id": a["category_id"], "segmentation": rle, "score": 1.0})
    return out


def run_instances(
    predictor: Any,
    root: str | Path,
    out: Path,
    meta: dict[str, Any],
    annotations: str | None = None,
    detections: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Mask AP of SAM prompted with detection (or ground-truth) boxes, one refinement round."""
    from segany.images import load_image

    coco, image_dir = _coco(root, annotations)
    ids = _coco_image_ids(coco, limit)
    grouped = None
    if detections is not None:
        data = json.loads(Path(detections).read_text())
        if not isinstance(data, list):
            raise ValueError(f"{detections}: expected a COCO results list")
        grouped = inst.group_detections(data)
    results: list[dict[str, Any]] = []
    n_boxes = 0
    t0 = time.perf_counter()
    for image_id in _progress(ids, len(ids), "instances", progress):
        boxes, cats, scores = inst.boxes_for_image(coco, image_id, grouped)
        if len(boxes) == 0:
            continue
        predictor.set_image(load_image(image_dir / coco.imgs[image_id]["file_name"]))
        masks = inst.masks_from_boxes(predictor, boxes)
        results += inst.instance_results(image_id, masks, cats, scores)
        n_boxes += len(boxes)
    seconds = time.perf_counter() - t0
    metrics = inst.evaluate_instances(coco, results, ids)
    payload: dict[str, Any] = {
        "meta": meta,
        "protocol": {
            "boxes": detections or "ground-truth boxes (non-crowd), score 1",
            "prompting": "box, multimask, most confident mask's logits + box fed back once, single-mask output",
            "cocoeval": {"iouType": "segm"},
        },
        "num_images": len(ids),
        "num_boxes": n_boxes,
        "seconds_per_image": seconds / max(len(ids), 1),
        "results": metrics,
    }
    report.write_json(out / "instances.json", payload)
    md = "# Instance segmentation from boxes (mask AP)\n\n" + _meta_lines(meta)
    md += report.markdown_table(
        ["boxes", "AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"],
        [[Path(detections).name if detections else "ground truth"] + list(metrics.values())],
    )
    md += f"\n{len(ids)} images, {n_boxes} boxes; {payload['seconds_per_image']:.2f} s/image.\n"
    (out / "instances.md").write_text(md)
    return payload


def _meta_lines(meta: dict[str, Any]) -> str:
    ckpt = meta.get("weights") or report.weights_description(meta.get("model"), meta.get("checkpoint"))
    return (
        f"Model `{meta.get('model')}` ({ckpt}), data {', '.join(f'`{d}`' for d in meta.get('data', []))}, "
        f"segany {meta.get('segany_version')}, {meta.get('created_utc')}.\n\n"
    )
