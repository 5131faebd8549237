"""Helpers for the annotation-engine tests: a real server process, a real PostgreSQL database, small images.

Tests that need PostgreSQL or Chromium skip when they are missing on a developer machine, and fail instead when
``SEGANY_REQUIRE_POSTGRES=1`` / ``SEGANY_REQUIRE_BROWSER=1`` (set by ``.ci/run``), so CI cannot pass silently.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from patience import PATIENCE_S
from PIL import Image

PASSWORD = "test-password-0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
PG_ADMIN_URL = os.environ.get(
    "SEGANY_TEST_PG_URL", "postgresql://segany:segany-test-only@127.0.0.1:5432/postgres"
)


def need(what: str, env: str, reason: str) -> None:
    """Skip locally, fail in CI (where ``env`` is set to 1)."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is required here ({env}=1) but unavailable: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


def make_images(folder: Path, sizes: list[tuple[int, int]] | None = None) -> list[Path]:
    """Small PNGs with one bright rectangle each (H, W given); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes or [(120, 200), (160, 96)]):
        a = np.full((h, w, 3), 30, np.uint8)
        a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (220, 60, 40)
        p = folder / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def rect_rle(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    """Uncompressed column-major COCO RLE of a filled rectangle [y0, y1) x [x0, x1)."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``segany annotate`` in a child process (the real CLI, the real uvicorn)."""

    def __init__(self, image_dir: Path, data_dir: Path, db_url: str, *, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:  # fmt: skip
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The `segany annotate` sub-command itself, without importing the other sub-commands' modules.
        launcher = ("import argparse, sys; from segany.cli import annotate; p = argparse.ArgumentParser(); "
                    "annotate.add_parser(p.add_subparsers()); sys.exit(annotate.run(p.parse_args()))")  # fmt: skip
        cmd = [sys.executable, "-c", launcher, "annotate", str(image_dir), "--data-dir", str(data_dir),
               "--db", db_url, "--port", str(self.port), "--model", "tiny", *(extra or [])]  # fmt: skip
        full_env = dict(os.environ, SEGANY_ADMIN_PASSWORD=PASSWORD, OMP_NUM_THREADS="1", **(env or {}))
        self.log = data_dir / f"server-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log_f = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=full_env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = PATIENCE_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.base + "/api/health", timeout=10.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def token(self, username: str = "admin", password: str = PASSWORD) -> str:
        r = httpx.post(
            self.base + "/api/login",
            json={"username": username, "password": password, "bearer": True},
            timeout=PATIENCE_S,  # a scrypt hash: slow on a loaded machine (httpx's default 5 s failed CI)
        )
        r.raise_for_status()
        return r.json()["token"]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return httpx.Client(base_url=self.base, headers=headers, timeout=PATIENCE_S)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log_f.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()


def _serve_forked(image_dir: Path, data_dir: Path, db_url: str, port: int) -> None:
    import uvicorn

    from segany.engine import EngineSettings, create_app
    from segany.engine.model import ModelSpec

    settings = EngineSettings(image_dir=image_dir, data_dir=data_dir, db_url=db_url, admin_password=PASSWORD,
                              model=ModelSpec(kind="tiny"))  # fmt: skip
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


class ForkedServer(Server):
    """The same app and uvicorn, forked from the test process so that a restart does not re-import torch.

    Only for tests whose server never runs the model (a forked child must not use torch's thread pools).
    """

    def __init__(self, image_dir: Path, data_dir: Path, db_url: str) -> None:  # noqa: D107 - no super().__init__
        import multiprocessing

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir / "forked.log"
        self.log.write_text("(forked server: output goes to the test's stderr)\n")
        self.proc = multiprocessing.get_context("fork").Process(
            target=_serve_forked, args=(image_dir, data_dir, db_url, self.port), daemon=True
        )
        self.proc.start()
        self._log_f = open(os.devnull, "wb")  # noqa: SIM115 - closed in kill()/stop()
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            if not self.proc.is_alive():
                raise RuntimeError(f"forked server exited {self.proc.exitcode}")
            try:
                if httpx.get(self.base + "/api/health", timeout=10.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("forked server not ready")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join()
        self._log_f.close()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
        self._log_f.close()


def pg_database() -> tuple[str, callable]:
    """A fresh PostgreSQL database; returns (url, drop). Skips/fails per SEGANY_REQUIRE_POSTGRES."""
    import psycopg

    admin = PG_ADMIN_URL
    name = f"segany_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        need("PostgreSQL", "SEGANY_REQUIRE_POSTGRES", str(err).strip().splitlines()[0])
    url = admin.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def chromium_available() -> None:
    if not Path(CHROMIUM).exists():
        need("Chromium", "SEGANY_REQUIRE_BROWSER", f"{CHROMIUM} not found (apt-get install chromium)")
    vendor = Path(__file__).parents[1] / "segany/engine/web/static/vendor/ort/ort.wasm.min.mjs"
    if not vendor.exists():
        need("onnxruntime-web", "SEGANY_REQUIRE_BROWSER", "run segany/engine/web/build.sh")
    if shutil.which("node") is None and os.environ.get("SEGANY_REQUIRE_BROWSER") == "1":
        pytest.fail("node/npm missing")
