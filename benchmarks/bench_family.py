"""MobileSAM / HQ-SAM speed: the official code and segany on the same weights, in one process.

The official side is the test oracle (`tests/oracle_family.py`): MobileSAM = SAM 1.0's model and predictor
around ``segment_anything_hq``'s TinyViT; HQ-SAM and Light HQ-SAM = ``segment_anything_hq`` 0.3. Prints the
encoder time per image and the decoder time per single-point prompt of both (medians, the two implementations
alternating so that background load hits both alike), their ratio and the max abs differences.

    python benchmarks/bench_family.py                          # vit_t with random weights
    python benchmarks/bench_family.py --model hq_vit_tiny --checkpoint sam_hq_vit_tiny.pth
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_t", help="vit_t, hq_vit_tiny, hq_vit_b, hq_vit_l or hq_vit_h")
    ap.add_argument("--checkpoint", default=None, help="official file (same weights for both); else random")
    ap.add_argument("--image", default=str(ROOT / "examples" / "dog_cat.jpg"))
    ap.add_argument("--repeats", type=int, default=3, help="encoder runs per implementation (median)")
    ap.add_argument("--prompts", type=int, default=10, help="single-point prompts per implementation")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from oracle_family import build_official, family_twins, load_official

    from segany import SamPredictor
    from segany.build import CONFIGS, build_sam
    from segany.checkpoint import load_state_dict, load_weights_into
    from segany.images import load_image

    config = CONFIGS[args.model]
    if args.checkpoint:
        sd = load_state_dict(args.checkpoint)
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
        else:
            from segment_anything import SamPredictor as OfficialPredictor

    image = load_image(args.image)
    print(
        f"{args.model}, image {image.shape[1]}×{image.shape[0]}, torch {torch.__version__}, {args.threads} threads"
    )
    p, q = SamPredictor(ours), OfficialPredictor(theirs)
    with torch.no_grad():
        for pred in (p, q):  # warm-up
            pred.set_image(image)
        enc_p, enc_q = [], []
        for _ in range(args.repeats):
            enc_q.append(median_time(lambda: q.set_image(image), 1))
            enc_p.append(median_time(lambda: p.set_image(image), 1))
    emb_diff = (p.get_image_embedding() - q.get_image_embedding()).abs().max().item()

    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    points = [np.array([[rng.uniform(0, w), rng.uniform(0, h)]]) for _ in range(args.prompts)]
    label = np.array([1])
    dec_p, dec_q, logit_diff, same = [], [], 0.0, True
    for c in points:
        t = time.perf_counter()
        a = q.predict(point_coords=c, point_labels=label, return_logits=True)
        dec_q.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = p.predict(point_coords=c, point_labels=label, return_logits=True)
        dec_p.append(time.perf_counter() - t)
        logit_diff = max(logit_diff, float(np.abs(a[0] - b[0]).max()))
        same &= bool(np.array_equal(a[0] > 0, b[0] > 0))

    e_q, e_p = statistics.median(enc_q), statistics.median(enc_p)
    d_q, d_p = statistics.median(dec_q), statistics.median(dec_p)
    print("\n| what | official (s) | segany (s) | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    print(f"| encoder, per image | {e_q:.3f} | {e_p:.3f} | {e_q / e_p:.2f}× | {emb_diff:.2e} (embedding) |")
    print(
        f"| decoder, per point prompt | {d_q:.4f} | {d_p:.4f} | {d_q / d_p:.2f}× | {logit_diff:.2e} (logits) |"
    )
    print(f"\nmasks identical to official: {same}")


if __name__ == "__main__":
    main()
