"""The annotation server under concurrency, crashes and load, on SQLite and on a real PostgreSQL.

* Concurrent edits: several clients update the same masks with the version they read; each update commits or
  gets 409, and the final version counts exactly the successful updates (no lost update).
* SIGKILL during saves: the server is killed at seeded random moments while a client saves; afterwards every
  save the client saw acknowledged is present, the database passes its integrity check, and no save is
  half-applied (each mask has exactly one history row per version).
* Many clients at once (reading, saving and rating): no error of any kind, and every acknowledged save and
  rating is in the database.

These tests check correctness only, with waits that do not assume a fast machine (`patience.PATIENCE_S`);
latency and throughput are measured by ``benchmarks/bench_engine_load.py``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from engine_harness import ForkedServer, Server, make_images, pg_database, rect_rle
from patience import PATIENCE_S
from sqlalchemy import text

from segany.engine.db import integrity_ok, make_engine

SEED = 1234


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/annotations.db"
        return
    url, drop = pg_database()
    yield url
    drop()


def test_concurrent_edits_and_load(db_url: str, tmp_path: Path) -> None:
    """One server per database for both checks (each start of the CLI imports torch: seconds)."""
    srv = _start(tmp_path, db_url)
    try:
        _concurrent_edits_lose_no_update(srv, db_url)
        _many_clients_lose_nothing(srv, db_url)
    finally:
        srv.stop()


def _run_threads(target: Callable[[int], None], n: int) -> None:
    """Run ``target(i)`` for i < n in threads; an exception in any of them fails the test (not only a warning)."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as err:  # re-raised below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _start(tmp_path: Path, db_url: str) -> Server:
    if not (tmp_path / "images").exists():
        make_images(tmp_path / "images")
    return Server(tmp_path / "images", tmp_path / "data", db_url)


def _body(key: str | None = None) -> dict:
    body: dict = {"rle": rect_rle(120, 200, 10, 60, 20, 90), "label": "obj", "seconds": 1.5}
    if key:
        body["idempotency_key"] = key
    return body


def _concurrent_edits_lose_no_update(srv: Server, db_url: str) -> None:
    tokens = [srv.token() for _ in range(2)] * 4  # 8 clients on 2 sessions (each login costs a scrypt hash)
    with srv.client(tokens[0]) as c:
        ids = [c.post("/api/images/1/annotations", json=_body()).json()["id"] for _ in range(2)]
    outcomes: Counter[tuple[int, int]] = Counter()
    lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(SEED + n)
        with srv.client(tokens[n]) as c:
            for _ in range(20):
                aid = rng.choice(ids)
                version = c.get(f"/api/annotations/{aid}").json()["version"]
                r = c.patch(
                    f"/api/annotations/{aid}", json={"version": version, "quality": rng.randint(1, 10)}
                )
                with lock:
                    outcomes[(aid, r.status_code)] += 1

    _run_threads(worker, 8)
    assert {code for _, code in outcomes} <= {200, 409}, outcomes
    with srv.client(tokens[0]) as c:
        for aid in ids:
            final = c.get(f"/api/annotations/{aid}").json()["version"]
            assert final == 1 + outcomes[(aid, 200)], (aid, final, outcomes)
        # Retries of one create, racing each other, make one row.
        key = "same-create-key-1"

        def create(_: int) -> None:
            with srv.client(tokens[0]) as cc:
                assert cc.post(
                    "/api/images/2/annotations", json={**_body(key), "rle": rect_rle(160, 96, 5, 9, 5, 9)}
                ).status_code in (200, 201)

        _run_threads(create, 6)
        assert len(c.get("/api/images/2/annotations").json()) == 1
    print(f"\nconcurrent edits ({db_url.split(':')[0]}): {sum(v for (a, s), v in outcomes.items() if s == 200)} "
          f"committed, {sum(v for (a, s), v in outcomes.items() if s == 409)} got 409, 0 lost")  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_during_saves_keeps_every_acknowledged_save(tmp_path: Path, backend: str) -> None:
    if backend == "sqlite":
        db_url, drop = f"sqlite:///{tmp_path}/annotations.db", None
    else:
        db_url, drop = pg_database()
    try:
        _kill_loop(tmp_path, db_url, iterations=8 if backend == "sqlite" else 4)
    finally:
        if drop is not None:
            drop()


def _kill_loop(tmp_path: Path, db_url: str, iterations: int) -> None:
    rng = random.Random(SEED)
    acked_creates: dict[str, int] = {}  # idempotency key -> annotation id
    acked_versions: dict[int, int] = {}  # annotation id -> highest acknowledged version
    make_images(tmp_path / "images")
    for it in range(iterations):
        srv = ForkedServer(tmp_path / "images", tmp_path / "data", db_url)
        token = srv.token()
        stop = threading.Event()

        def writer(srv: Server, token: str, stop: threading.Event, it: int) -> None:
            n = 0
            with srv.client(token) as c:
                while not stop.is_set():
                    n += 1
                    key = f"kill-{it}-{n:05d}"
                    try:
                        r = c.post("/api/images/1/annotations", json=_body(key))
                        if r.status_code in (200, 201):
                            acked_creates[key] = r.json()["id"]
                            aid = r.json()["id"]
                            r2 = c.patch(f"/api/annotations/{aid}", json={"version": 1, "quality": 5})
                            if r2.status_code == 200:
                                acked_versions[aid] = r2.json()["version"]
                    except httpx.TransportError:
                        return  # the server is gone: whatever was not acknowledged may be lost

        t = threading.Thread(target=writer, args=(srv, token, stop, it))
        t.start()
        # Kill after a seeded number of acknowledged saves plus a seeded delay, so that it lands inside the
        # save stream (often mid-request) however fast or loaded the machine is.
        target = len(acked_creates) + rng.randint(2, 6)
        deadline = time.monotonic() + PATIENCE_S
        while len(acked_creates) < target and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        srv.kill()
        stop.set()
        t.join()
    assert len(acked_creates) >= 2 * iterations, "the writer saved too little to test anything"

    engine = make_engine(db_url)
    try:
        assert integrity_ok(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT a.id, a.version, a.idempotency_key, (SELECT count(*) FROM annotation_history h "
                    "WHERE h.annotation_id = a.id) FROM annotations a"
                )  # fmt: skip
            ).all()
    finally:
        engine.dispose()
    by_key = {key: (aid, version, n_hist) for aid, version, key, n_hist in rows}
    missing = [k for k in acked_creates if k not in by_key]
    assert not missing, f"acknowledged saves lost: {missing[:5]}"
    for key, aid in acked_creates.items():
        assert by_key[key][0] == aid
    versions = {aid: version for aid, version, _, _ in rows}
    for aid, v in acked_versions.items():
        assert versions[aid] >= v, (aid, versions[aid], v)
    half = [(aid, version, n) for aid, version, _, n in rows if n != version]
    assert not half, f"half-applied saves (history rows != version): {half[:5]}"
    print(f"\nSIGKILL test ({db_url.split(':')[0]}): {iterations} kills, {len(acked_creates)} acknowledged creates "
          f"+ {len(acked_versions)} updates, all present; integrity ok; 0 half-applied")  # fmt: skip


def _many_clients_lose_nothing(srv: Server, db_url: str) -> None:
    """16 clients open images, save masks and rate them at once: every request succeeds, nothing is lost."""
    n_clients, rounds = 16, 4
    tokens = [srv.token() for _ in range(4)] * (n_clients // 4)
    with srv.client(tokens[0]) as c:
        assert c.get("/api/images/1/embedding").status_code == 200  # computed once, then cached
    codes: Counter[tuple[str, int]] = Counter()
    acked: dict[int, tuple[str, int]] = {}  # annotation id -> (label, acknowledged version)
    rated: set[int] = set()
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(SEED + n)
        with srv.client(tokens[n]) as c:

            def call(method: str, url: str, **kw) -> httpx.Response:
                r = c.request(method, url, **kw)  # a timeout or a dropped connection fails the test
                with lock:
                    codes[(method, r.status_code)] += 1
                return r

            for i in range(rounds):
                image = rng.choice([1, 2])
                call("GET", f"/api/images/{image}/embedding")  # what a page does when it opens an image
                call("GET", f"/api/images/{image}/annotations")
                h, w = (120, 200) if image == 1 else (160, 96)
                y, x = rng.randrange(0, h - 10), rng.randrange(0, w - 10)
                label = f"load-{n}-{i}"
                r = call("POST", f"/api/images/{image}/annotations",
                         json={"rle": rect_rle(h, w, y, y + 10, x, x + 10), "seconds": 2.0, "label": label})  # fmt: skip
                if r.status_code != 201:
                    continue
                a = r.json()
                with lock:
                    acked[a["id"]] = (label, a["version"])
                r = call("PATCH", f"/api/annotations/{a['id']}", json={"version": a["version"], "quality": 7})
                if r.status_code == 200:
                    with lock:
                        acked[a["id"]] = (label, r.json()["version"])
                        rated.add(a["id"])

    _run_threads(client, n_clients)
    total = sum(codes.values())
    failed = {k: v for k, v in codes.items() if k[1] >= 400}
    assert not failed, f"requests that failed (method, status): {failed}"
    assert len(acked) == len(rated) == n_clients * rounds
    with srv.client(tokens[0]) as c:
        for aid, (label, version) in acked.items():
            r = c.get(f"/api/annotations/{aid}")
            assert r.status_code == 200, (aid, r.status_code)
            got = r.json()
            assert (got["label"], got["version"], got["quality"]) == (label, version, 7), (aid, got)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            history = dict(
                conn.execute(
                    text("SELECT annotation_id, count(*) FROM annotation_history GROUP BY annotation_id")
                ).all()  # fmt: skip
            )
    finally:
        engine.dispose()
    assert all(history.get(aid) == version for aid, (_, version) in acked.items()), "a save is half-applied"
    print(f"\nmany clients ({db_url.split(':')[0]}, {n_clients} clients x {rounds} rounds): {total} requests, "
          f"0 failed; {len(acked)} saves and {len(rated)} ratings acknowledged, all present")  # fmt: skip
