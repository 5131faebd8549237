"""Annotation-server load: latency and throughput of many clients reading, saving and rating at once.

Starts the real server (`segany annotate`, tiny model) on SQLite or PostgreSQL, runs N closed-loop clients for
a fixed time (each round: open an image's embedding and annotation list, save a mask, rate it), and prints the
request rate, the error rate and latency percentiles per request kind. Closed loop: a slow answer delays the
client's next request, so the tail latencies are lower bounds (coordinated omission).

    python benchmarks/bench_engine_load.py                         # SQLite, 16 clients, 10 s
    python benchmarks/bench_engine_load.py --db postgresql         # a fresh database at $SEGANY_TEST_PG_URL
    python benchmarks/bench_engine_load.py --max-p95-ms 3000 --min-requests 100   # exit 1 if missed

The correctness of the same traffic (no error, nothing lost) is asserted by ``tests/test_engine_db.py``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from engine_harness import Server, make_images, pg_database, rect_rle  # noqa: E402


def percentiles_ms(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100)
    return f"p50 {1000 * q[49]:.0f} ms, p95 {1000 * q[94]:.0f} ms, p99 {1000 * q[98]:.0f} ms, max {1000 * max(values):.0f} ms"


def run_load(
    srv: Server, n_clients: int, duration: float, seed: int
) -> tuple[dict[str, list[float]], Counter]:
    tokens = [srv.token() for _ in range(min(4, n_clients))]
    with srv.client(tokens[0]) as c:  # the first embedding builds the model: not part of the measurement
        c.timeout = httpx.Timeout(600.0)
        c.get("/api/images/1/embedding").raise_for_status()
        c.get("/api/images/2/embedding").raise_for_status()
    latencies: dict[str, list[float]] = {}
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    t_end = time.monotonic() + duration

    def client(n: int) -> None:
        rng = random.Random(seed + n)
        with srv.client(tokens[n % len(tokens)]) as c:

            def call(kind: str, method: str, url: str, **kw) -> httpx.Response | None:
                t0 = time.perf_counter()
                try:
                    r = c.request(method, url, **kw)
                    code = r.status_code
                except httpx.TransportError:
                    r, code = None, 599
                with lock:
                    latencies.setdefault(kind, []).append(time.perf_counter() - t0)
                    codes[code] += 1
                return r

            while time.monotonic() < t_end:
                image = rng.choice([1, 2])
                call("open image (embedding)", "GET", f"/api/images/{image}/embedding")
                call("list annotations", "GET", f"/api/images/{image}/annotations")
                h, w = (120, 200) if image == 1 else (160, 96)
                y, x = rng.randrange(0, h - 10), rng.randrange(0, w - 10)
                r = call("save mask", "POST", f"/api/images/{image}/annotations",
                         json={"rle": rect_rle(h, w, y, y + 10, x, x + 10), "seconds": 2.0})  # fmt: skip
                if r is not None and r.status_code == 201:
                    a = r.json()
                    call("rate mask", "PATCH", f"/api/annotations/{a['id']}",
                         json={"version": a["version"], "quality": 7})  # fmt: skip

    threads = [threading.Thread(target=client, args=(n,)) for n in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, codes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--max-p95-ms", type=float, default=None, help="fail (exit 1) if the overall p95 is above"
    )
    ap.add_argument(
        "--min-requests", type=int, default=None, help="fail (exit 1) if fewer requests completed"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        root = Path(tmp)
        make_images(root / "images")
        drop = None
        if args.db == "sqlite":
            db_url = f"sqlite:///{root}/annotations.db"
        else:
            db_url, drop = pg_database()
        srv = Server(root / "images", root / "data", db_url)
        try:
            latencies, codes = run_load(srv, args.clients, args.duration, args.seed)
        finally:
            srv.stop()
            if drop is not None:
                drop()

    every = [v for vs in latencies.values() for v in vs]
    total = sum(codes.values())
    errors = sum(v for k, v in codes.items() if k >= 400)
    print(f"engine load: {args.db}, {args.clients} clients, {args.duration:.0f} s (closed loop)")
    print(f"  {total} requests, {total / args.duration:.1f} req/s, error rate {errors / max(total, 1):.2%}, "
          f"codes {dict(sorted(codes.items()))}")  # fmt: skip
    print(f"  all requests: {percentiles_ms(every)}")
    for kind, values in latencies.items():
        print(f"  {kind} ({len(values)}): {percentiles_ms(values)}")

    ok = True
    if args.max_p95_ms is not None and len(every) >= 2:
        p95 = 1000 * statistics.quantiles(every, n=100)[94]
        if p95 > args.max_p95_ms:
            print(f"FAIL: p95 {p95:.0f} ms > {args.max_p95_ms:.0f} ms")
            ok = False
    if args.min_requests is not None and total < args.min_requests:
        print(f"FAIL: {total} requests < {args.min_requests}")
        ok = False
    if errors:
        print(f"FAIL: {errors} requests failed")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
