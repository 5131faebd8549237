"""SAM-family speed: the official code and segany on the same weights, in one process.

The official side is the test oracles (`tests/oracle_family.py`, `tests/oracle_sam2.py`): MobileSAM = SAM 1.0's
model and predictor around ``segment_anything_hq``'s TinyViT; HQ-SAM and Light HQ-SAM = ``segment_anything_hq``
0.3; SAM 2 / 2.1 = ``sam2`` 1.1.0's model and ``SAM2ImagePredictor``. Prints, per model, the encoder time per
image and the decoder time per single-point prompt of both (medians, the two implementations alternating so that
background load hits both alike), their ratios and the max abs differences, plus the load average.

    python benchmarks/bench_family.py          # vit_t, hq_vit_tiny, sam2.1_hiera_tiny, random weights
    python benchmarks/bench_family.py --model hq_vit_tiny --checkpoint sam_hq_vit_tiny.pth
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call: on a machine shared with other jobs the CPU time
    is what the implementation costs, the wall time also counts the waits for a core."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def build_pair(name: str, checkpoint: str | None) -> tuple[Any, Any, str]:
    """(segany predictor, official predictor, official code's name) on the same weights."""
    from segany import SamPredictor

    if name.startswith("sam2"):
        from oracle_sam2 import build_official as build_official_sam2
        from oracle_sam2 import twin_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from segany.build import sam_model_registry
        from segany.checkpoint import load_state_dict

        ours: Any  # a Sam2, which SamPredictor takes like a Sam
        if checkpoint:
            ours = sam_model_registry[name](checkpoint=checkpoint)
            theirs = build_official_sam2(name)
            theirs.load_state_dict(load_state_dict(checkpoint))
        else:
            ours, theirs, _ = twin_sam2(name, seed=0)
        return SamPredictor(ours.eval()), SAM2ImagePredictor(theirs), "sam2 1.1.0"

    from oracle_family import build_official, family_twins, load_official

    from segany.build import CONFIGS, build_sam
    from segany.checkpoint import load_state_dict, load_weights_into

    config = CONFIGS[name]
    if checkpoint:
        sd = load_state_dict(checkpoint)
        theirs = build_official(config)
        load_official(theirs, sd)
        ours = build_sam(config)
        load_weights_into(ours, sd)
    else:
        ours, theirs, _ = family_twins(config, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if config.hq_token:
            from segment_anything_hq import SamPredictor as OfficialPredictor

            official = "segment-anything-hq 0.3"
        else:
            from segment_anything import SamPredictor as OfficialPredictor

            official = "segment-anything 1.0 + segment-anything-hq's TinyViT"
    return SamPredictor(ours), OfficialPredictor(theirs), official


def measure(
    name: str, checkpoint: str | None, image: np.ndarray, repeats: int, prompts: int
) -> dict[str, Any]:
    p, q, official = build_pair(name, checkpoint)
    model: Any = p.model
    n_params = sum(t.numel() for t in model.parameters())
    with torch.no_grad():
        for pred in (p, q):  # warm-up
            pred.set_image(image)
        enc_p, enc_q = [], []
        for _ in range(repeats):  # alternating, so that background load hits both alike
            enc_q.append(timed(lambda: q.set_image(image)))
            enc_p.append(timed(lambda: p.set_image(image)))
    emb_diff = (p.get_image_embedding() - q.get_image_embedding()).abs().max().item()

    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    points = [np.array([[rng.uniform(0, w), rng.uniform(0, h)]]) for _ in range(prompts)]
    label = np.array([1])
    dec_p, dec_q, logit_diff, same = [], [], 0.0, True
    for c in points:
        w, t = time.perf_counter(), time.process_time()
        a = q.predict(point_coords=c, point_labels=label, return_logits=True)
        dec_q.append((time.perf_counter() - w, time.process_time() - t))
        w, t = time.perf_counter(), time.process_time()
        b = p.predict(point_coords=c, point_labels=label, return_logits=True)
        dec_p.append((time.perf_counter() - w, time.process_time() - t))
        logit_diff = max(logit_diff, float(np.abs(a[0] - b[0]).max()))
        same &= bool(np.array_equal(a[0] > 0, b[0] > 0))
    return {
        "official": official,
        "params": n_params,
        **{
            f"{what}_{side}_{clock}": statistics.median(t[i] for t in runs)
            for what, side, runs in (
                ("enc", "q", enc_q),
                ("enc", "p", enc_p),
                ("dec", "q", dec_q),
                ("dec", "p", dec_p),
            )
            for i, clock in enumerate(("wall", "cpu"))
        },
        "emb_diff": emb_diff,
        "logit_diff": logit_diff,
        "same": same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="vit_t,hq_vit_tiny,sam2.1_hiera_tiny",
        help="comma-separated: vit_t, hq_vit_tiny, hq_vit_b/l/h, sam2.1_hiera_* / sam2_hiera_* "
        "(default: each family's smallest)",
    )
    ap.add_argument("--checkpoint", default=None, help="official file (one --model; same weights for both)")
    ap.add_argument("--image", default=str(ROOT / "examples" / "dog_cat.jpg"))
    ap.add_argument("--repeats", type=int, default=3, help="encoder runs per implementation (median)")
    ap.add_argument("--prompts", type=int, default=10, help="single-point prompts per implementation")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.model.split(",") if n.strip()]
    if args.checkpoint and len(names) != 1:
        ap.error("--checkpoint needs exactly one --model")

    from segany.images import load_image

    image = load_image(args.image)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"image {image.shape[1]}×{image.shape[0]}, torch {torch.__version__}, {args.threads} threads, "
        f"{args.repeats} encoder runs and {args.prompts} prompts each, load average at start {load:.2f}"
    )
    rows = []
    for name in names:
        r = measure(name, args.checkpoint, image, args.repeats, args.prompts)
        rows.append((name, r))
        print(f"{name}: done ({r['official']})", flush=True)
    for clock, title in (
        ("cpu", "CPU time of this process"),
        ("wall", "wall time (includes waiting for a core)"),
    ):
        print(
            f"\n{title}:\n\n| model | params | encoder official (s) | segany (s) | speed-up "
            "| decoder per prompt official (ms) | segany (ms) | speed-up | max abs diff (embedding / logits) "
            "| masks identical |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, r in rows:
            eq, ep, dq, dp = (r[f"{k}_{clock}"] for k in ("enc_q", "enc_p", "dec_q", "dec_p"))
            print(
                f"| {name} | {r['params'] / 1e6:.1f}M | {eq:.2f} | {ep:.2f} | {eq / ep:.2f}× | {1000 * dq:.1f} "
                f"| {1000 * dp:.1f} | {dq / dp:.2f}× | {r['emb_diff']:.1e} / {r['logit_diff']:.1e} | {r['same']} |"
            )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end {load:.2f}")


if __name__ == "__main__":
    main()
