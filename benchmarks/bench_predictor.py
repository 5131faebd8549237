"""Predictor speed: the official segment-anything 1.0 and segany on the same weights, in one process.

Prints per-image encoder time, per-prompt decoder time and peak memory for both, their ratios, and the
opt-in fast paths (sdpa / int8 / compile / bf16) with their max abs difference to the official embedding.

    python benchmarks/bench_predictor.py                       # vit_b-sized random weights
    python benchmarks/bench_predictor.py --checkpoint sam_vit_b_01ec64.pth --image examples/dog_cat.jpg
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms in a thread."""

    def __enter__(self) -> PeakRSS:
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    times, out, mem = [], None, 0.0
    for _ in range(repeats):
        with PeakRSS() as m, torch.no_grad():
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        mem = max(mem, m.mib)
    return statistics.median(times), mem, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="vit_b", help="vit_b / vit_l / vit_h (random weights unless --checkpoint)"
    )
    ap.add_argument(
        "--checkpoint", default=None, help="official .pth or .safetensors (same weights for both)"
    )
    ap.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "examples" / "dog_cat.jpg"))
    ap.add_argument("--repeats", type=int, default=3, help="encoder runs per implementation (median)")
    ap.add_argument("--prompts", type=int, default=10, help="single-point prompts timed per implementation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--fast", default="sdpa,int8,compile", help="comma list of fast paths to time ('' for none)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from oracle import build_official, randomize_
    from segment_anything import SamPredictor as OfficialPredictor

    from segany import SamPredictor
    from segany.acceleration import accelerate
    from segany.build import CONFIGS, build_sam
    from segany.checkpoint import load_state_dict
    from segany.images import load_image

    config = CONFIGS[args.model]
    ours = build_sam(config)
    if args.checkpoint:
        sd = load_state_dict(args.checkpoint)
        ours.load_state_dict(sd)
    else:
        sd = randomize_(ours, 0)
    theirs = build_official(config)
    theirs.load_state_dict(sd)
    image = load_image(args.image)
    print(
        f"{args.model}, image {image.shape[1]}×{image.shape[0]}, torch {torch.__version__}, {args.threads} threads"
    )

    p, q = SamPredictor(ours), OfficialPredictor(theirs)
    rows = []
    # alternate the two so that background load hits both alike; report the median of each
    tq, tp, m_q, m_p = [], [], 0.0, 0.0
    for _ in range(args.repeats):
        t, m, _ = timed(lambda: q.set_image(image), 1)
        tq.append(t)
        m_q = max(m_q, m)
        t, m, _ = timed(lambda: p.set_image(image), 1)
        tp.append(t)
        m_p = max(m_p, m)
    t_q, t_p = statistics.median(tq), statistics.median(tp)
    ref = q.features.clone()
    diff = (p.features - ref).abs().max().item()
    rows.append(("encoder official", t_q, m_q, 0.0))
    rows.append(("encoder segany (exact)", t_p, m_p, diff))

    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    pts = [np.array([[rng.uniform(0, w), rng.uniform(0, h)]]) for _ in range(args.prompts)]
    lab = np.array([1])

    def decode(pred: object) -> Callable[[], object]:
        return lambda: [pred.predict(point_coords=c, point_labels=lab) for c in pts]  # type: ignore[attr-defined]

    for pred in (p, q):  # warm-up (first-call allocations)
        pred.predict(point_coords=pts[0], point_labels=lab)
    d_q, dm_q, out_q = timed(decode(q), 1)
    d_p, dm_p, out_p = timed(decode(p), 1)
    same = all(np.array_equal(a[0], b[0]) for a, b in zip(out_p, out_q, strict=True))  # type: ignore[arg-type]
    rows.append(("decoder official (per prompt)", d_q / args.prompts, dm_q, 0.0))
    rows.append(("decoder segany (per prompt)", d_p / args.prompts, dm_p, 0.0 if same else float("nan")))

    for mode in [m for m in args.fast.split(",") if m]:
        model = build_sam(config)
        model.load_state_dict(sd)
        fast = SamPredictor(accelerate(model, mode))
        if mode == "compile":
            with torch.no_grad():
                t = time.perf_counter()
                fast.set_image(image)
                print(f"compile warm-up: {time.perf_counter() - t:.1f} s")
        t_f, m_f, _ = timed(lambda f=fast: f.set_image(image), args.repeats)
        rows.append((f"encoder segany ({mode})", t_f, m_f, (fast.features - ref).abs().max().item()))

    print("\n| what | time (s) | peak extra RSS (MiB) | max abs diff vs official | speed-up vs official |")
    print("|---|---|---|---|---|")
    for name, t, mem, d in rows:
        base = t_q if name.startswith("encoder") else d_q / args.prompts
        print(f"| {name} | {t:.3f} | {mem:.0f} | {d:.2e} | {base / t:.2f}× |")
    print(f"\ndecoder masks identical to official: {same}")


if __name__ == "__main__":
    main()
