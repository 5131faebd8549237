"""Encoder time per image and decoder time per click of segany's shipped default model.

python benchmarks/bench_default_model.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from segany import SamPredictor, sam_model_registry
from segany.images import load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "examples" / "dog_cat.jpg"))
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor = SamPredictor(sam_model_registry["default"]())
    image = load_image(args.image)
    enc = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        predictor.set_image(image)
        enc.append(time.perf_counter() - t)
    h, w = image.shape[:2]
    dec = []
    for _ in range(10):
        t = time.perf_counter()
        predictor.predict(point_coords=np.array([[w / 3, h / 2]]), point_labels=np.array([1]))
        dec.append(time.perf_counter() - t)
    print(
        f"threads {args.threads}: encoder median {statistics.median(enc[1:]):.3f} s per image "
        f"(first call {enc[0]:.3f} s); decoder + postprocessing median {statistics.median(dec) * 1000:.1f} ms per click"
    )


if __name__ == "__main__":
    main()
