"""The annotation server's API in-process: start-up rules, authentication, CSRF, per-project access, path
traversal, upload caps, XSS payloads, validation, optimistic concurrency, idempotent creates and the exports."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_harness import PASSWORD, make_images, rect_rle
from fastapi.testclient import TestClient
from patience import PATIENCE_S
from PIL import Image
from pycocotools import mask as mask_utils
from sqlalchemy import text

from segany.engine import ConfigError, EngineSettings, create_app
from segany.engine.model import ModelSpec
from segany.onnx_export import PAGE_CLICK_INPUTS, PAGE_IMAGE_INPUTS, PAGE_UPSCALE_INPUTS

BASE = "https://testserver"  # https so that the Secure session cookie is sent back


def _settings(tmp_path: Path, **kw) -> EngineSettings:
    kw.setdefault("admin_password", PASSWORD)
    # No background embeddings unless a test asks for them (they would add cache files).
    kw.setdefault("prefetch_ahead", 0)
    return EngineSettings(
        image_dir=tmp_path / "images",
        data_dir=tmp_path / "data",
        db_url=f"sqlite:///{tmp_path}/db.sqlite",
        model=ModelSpec(kind="tiny"),
        max_upload_bytes=200_000,
        max_pixels=300 * 300,
        max_json_bytes=1_000_000,
        **kw,
    )


@pytest.fixture()
def env(tmp_path: Path):
    make_images(tmp_path / "images")
    app = create_app(_settings(tmp_path))
    client = TestClient(app, base_url=BASE)
    r = client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return app, client, tmp_path


def _save(client: TestClient, image_id: int = 1, **extra) -> dict:
    body = {"rle": rect_rle(120, 200, 30, 90, 50, 150), **extra}
    r = client.post(f"/api/images/{image_id}/annotations", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


# ---- start-up ----------------------------------------------------------------------------------------------


def test_refuses_to_start_without_a_real_secret(tmp_path: Path) -> None:
    make_images(tmp_path / "images")
    with pytest.raises(ConfigError, match="no admin password"):
        create_app(_settings(tmp_path, admin_password=None))
    with pytest.raises(ConfigError, match="at least 12"):
        create_app(_settings(tmp_path, admin_password="short"))
    with pytest.raises(ConfigError, match="local-only"):
        create_app(_settings(tmp_path, admin_password=None, dev_mode=True, host="0.0.0.0"))
    dev = _settings(tmp_path, admin_password=None, dev_mode=True, host="127.0.0.1").check()
    assert dev.generated_password and len(dev.admin_password or "") >= 12


def test_sqlite_runs_in_wal_with_full_sync(env) -> None:
    app, _, _ = env
    with app.state.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


# ---- authentication, CSRF, access ---------------------------------------------------------------------------


def test_every_api_route_needs_login(env) -> None:
    app, _, _ = env
    anon = TestClient(app, base_url=BASE)
    open_routes = {"/api/login", "/api/health", "/api/openapi.json"}
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/api/") or path in open_routes:
            continue
        url = path.replace("{project_id}", "1").replace("{image_id}", "1").replace("{annotation_id}", "1")
        for method in route.methods - {"HEAD"}:
            r = anon.request(method, url, json={})
            assert r.status_code == 401, (method, url, r.status_code)
            checked += 1
    assert checked >= 15


def test_login_failures_are_throttled_and_cookie_is_strict(env) -> None:
    app, _, _ = env
    c = TestClient(app, base_url=BASE)
    for _ in range(10):
        assert (
            c.post("/api/login", json={"username": "admin", "password": "wrong-password!"}).status_code == 401
        )
    assert c.post("/api/login", json={"username": "admin", "password": PASSWORD}).status_code == 429
    fresh = TestClient(app, base_url=BASE, client=("10.0.0.8", 1))
    cookie = fresh.post("/api/login", json={"username": "admin", "password": PASSWORD}).headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie


def test_csrf_token_and_origin_are_required_for_cookie_sessions(env) -> None:
    app, client, _ = env
    body = {"rle": rect_rle(120, 200, 0, 10, 0, 10)}
    no_token = TestClient(app, base_url=BASE, cookies=client.cookies)
    assert no_token.post("/api/images/1/annotations", json=body).status_code == 403
    bad = {"X-CSRF-Token": "x" * 43}
    assert no_token.post("/api/images/1/annotations", json=body, headers=bad).status_code == 403
    foreign = {"Origin": "https://evil.example"}
    assert client.post("/api/images/1/annotations", json=body, headers=foreign).status_code == 403
    assert (
        client.post(
            "/api/images/1/annotations", json=body, headers={"Sec-Fetch-Site": "cross-site"}
        ).status_code
        == 403
    )
    assert client.post("/api/images/1/annotations", json=body, headers={"Origin": BASE}).status_code == 201
    # A bearer token is never sent by a browser on its own: no CSRF token needed.
    token = (
        TestClient(app, base_url=BASE)
        .post("/api/login", json={"username": "admin", "password": PASSWORD, "bearer": True})
        .json()["token"]
    )
    bearer = TestClient(app, base_url=BASE, headers={"Authorization": f"Bearer {token}"})
    assert bearer.post("/api/images/1/annotations", json=body).status_code == 201
    # Logging in from another site (login CSRF) is refused too.
    r = TestClient(app, base_url=BASE).post(
        "/api/login", json={"username": "admin", "password": PASSWORD}, headers=foreign
    )
    assert r.status_code == 403


def test_per_project_access(env) -> None:
    app, admin, _ = env
    ann = _save(admin)
    assert (
        admin.post("/api/users", json={"username": "bob", "password": "bob-password-123"}).status_code == 201
    )
    bob = TestClient(app, base_url=BASE)
    bob.headers["X-CSRF-Token"] = bob.post(
        "/api/login", json={"username": "bob", "password": "bob-password-123"}
    ).json()["csrf_token"]
    assert bob.get("/api/projects").json() == []
    for url in ["/api/projects/1/images", "/api/images/1", "/api/images/1/file", "/api/images/1/annotations",
                f"/api/annotations/{ann['id']}", "/api/projects/1/export"]:  # fmt: skip
        assert bob.get(url).status_code == 404, url
    assert bob.patch(f"/api/annotations/{ann['id']}", json={"version": 1, "quality": 1}).status_code == 404
    assert bob.post("/api/users", json={"username": "eve", "password": "eve-password-123"}).status_code == 403
    assert bob.post("/api/projects/1/members", json={"username": "bob"}).status_code == 403
    assert admin.post("/api/projects/1/members", json={"username": "bob"}).status_code == 204
    assert bob.get("/api/images/1/annotations").status_code == 200
    # A project bob is not in stays closed.
    pid = admin.post("/api/projects", json={"name": "secret"}).json()["id"]
    assert bob.get(f"/api/projects/{pid}/images").status_code == 404


# ---- path traversal and file serving -------------------------------------------------------------------------


def test_path_traversal_never_serves_files(env) -> None:
    app, client, tmp_path = env
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    attempts = [
        "/api/images/..%2F..%2Fsecret.txt/file", "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
        "/api/images/%252e%252e%252fsecret.txt/file", "/api/images//etc/passwd/file",
        "/api/images/..\\..\\secret.txt/file", "/api/images/1%00/file", "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt", "/static/..%2f..%2f..%2fsecret.txt", "/static//etc/passwd",
        "/api/images/99999/file", "/api/images/-1/file",
    ]  # fmt: skip
    for url in attempts:
        r = client.get(url)
        assert r.status_code in (400, 404, 405, 422), (url, r.status_code)
        assert b"TOP-SECRET" not in r.content and b"root:" not in r.content


def test_symlinks_are_not_imported_or_served(tmp_path: Path) -> None:
    make_images(tmp_path / "images")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    (tmp_path / "images" / "link.png").symlink_to(outside)
    app = create_app(_settings(tmp_path))
    c = TestClient(app, base_url=BASE)
    c.post("/api/login", json={"username": "admin", "password": PASSWORD})
    names = [im["file_name"] for im in c.get("/api/projects/1/images").json()]
    assert names == ["img0.png", "img1.png"]
    # A link planted after import, in place of a served file, is refused at serving time.
    target = tmp_path / "images" / "img0.png"
    target.unlink()
    target.symlink_to(outside)
    assert c.get("/api/images/1/file").status_code == 404


def test_image_served_with_sniffed_type_and_nosniff(env) -> None:
    _, client, _ = env
    r = client.get("/api/images/1/file")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in r.headers["content-security-policy"]


# ---- uploads ----------------------------------------------------------------------------------------------


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 99, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_caps_and_format_allowlist(env) -> None:
    _, client, _ = env
    ok = client.post("/api/projects/1/images", files={"file": ("<b>x</b>.png", _png(50, 60), "image/png")})
    assert ok.status_code == 201 and ok.json()["width"] == 60 and ok.json()["file_name"] == "<b>x</b>.png"
    again = client.post("/api/projects/1/images", files={"file": ("copy.png", _png(50, 60), "image/png")})
    assert again.status_code == 200 and again.json()["id"] == ok.json()["id"]
    # Over the byte cap: refused with 413, with a Content-Length and chunked (no Content-Length).
    big = os.urandom(300_000)
    assert (
        client.post("/api/projects/1/images", files={"file": ("big.png", big, "image/png")}).status_code
        == 413
    )

    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000

    r = client.post("/api/projects/1/images", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=xyz"})  # fmt: skip
    assert r.status_code == 413
    # Over the pixel cap (cheap to send, expensive to decode): refused before decoding.
    assert (
        client.post(
            "/api/projects/1/images", files={"file": ("wide.png", _png(1, 100_000), "image/png")}
        ).status_code
        == 413
    )
    # Not an allowed format, whatever the name says.
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    html = b"<html><script>alert(1)</script></html>"
    for name, data in [("x.png", svg), ("y.png", html), ("z.jpg", b"")]:
        r = client.post("/api/projects/1/images", files={"file": (name, data, "image/png")})
        assert r.status_code in (415, 422), (name, r.status_code)
    assert (
        client.post(
            "/api/projects/1/images", files={"file": ("t.png", _png(50, 60)[:60], "image/png")}
        ).status_code
        == 422
    )


def test_json_body_cap(env) -> None:
    app, client, _ = env
    huge = {"rle": {"size": [120, 200], "counts": [1] * 600_000}}
    assert client.post("/api/images/1/annotations", json=huge).status_code == 413


# ---- annotations ------------------------------------------------------------------------------------------


def test_labels_are_stored_verbatim_and_validated(env) -> None:
    _, client, _ = env
    payload = "<img src=x onerror=window.__xss=1>\"'><svg onload=alert(1)>javascript:alert(1)"
    a = _save(client, label=payload)
    assert client.get(f"/api/annotations/{a['id']}").json()["label"] == payload
    bad = [
        {"rle": rect_rle(120, 200, 0, 5, 0, 5), "label": "nul\x00byte"},
        {"rle": rect_rle(100, 200, 0, 5, 0, 5)},  # wrong size for the image
        {"rle": {"size": [120, 200], "counts": [5, 5]}},  # does not cover the image
        {"rle": {"size": [120, 200], "counts": [24000]}},  # empty mask
        {"rle": {"size": [120, 200], "counts": [-1, 24001]}},
        {"rle": rect_rle(120, 200, 0, 5, 0, 5), "quality": 11},
        {"rle": rect_rle(120, 200, 0, 5, 0, 5), "seconds": -1},
        {"rle": rect_rle(120, 200, 0, 5, 0, 5), "prompts": [{"x": "NaN", "y": 1, "label": 1}]},
        {"rle": rect_rle(120, 200, 0, 5, 0, 5), "prompts": [{"x": 1, "y": 1, "label": 7}]},
    ]
    for body in bad:
        r = client.post("/api/images/1/annotations", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)


def test_stale_update_gets_409_and_never_overwrites(env) -> None:
    _, client, _ = env
    a = _save(client, label="first", quality=5)
    r1 = client.patch(f"/api/annotations/{a['id']}", json={"version": 1, "label": "alice"})
    assert r1.status_code == 200 and r1.json()["version"] == 2
    r2 = client.patch(f"/api/annotations/{a['id']}", json={"version": 1, "label": "bob"})
    assert r2.status_code == 409 and r2.json()["current_version"] == 2
    assert client.get(f"/api/annotations/{a['id']}").json()["label"] == "alice"
    assert client.delete(f"/api/annotations/{a['id']}?version=1").status_code == 409
    gone = client.delete(f"/api/annotations/{a['id']}?version=2")
    assert gone.status_code == 200 and gone.json()["deleted"]
    assert client.get("/api/images/1/annotations").json() == []


def test_idempotent_create(env) -> None:
    _, client, _ = env
    first = _save(client, idempotency_key="retry-key-0001")
    second = _save(client, idempotency_key="retry-key-0001")
    assert first["id"] == second["id"]
    assert len(client.get("/api/images/1/annotations").json()) == 1


def test_exports_decode_to_the_saved_masks(env) -> None:
    _, client, _ = env
    _save(client, label="car", quality=9, seconds=4.5)
    _save(client, image_id=2, **{"rle": rect_rle(160, 96, 10, 20, 10, 30)})
    coco = client.get("/api/projects/1/export?format=coco").json()
    assert {c["name"] for c in coco["categories"]} == {"car", "object"}
    a = next(x for x in coco["annotations"] if x["image_id"] == 1)
    m = mask_utils.decode(a["segmentation"])
    assert m.shape == (120, 200) and m.sum() == 60 * 100 == a["area"] and m[30:90, 50:150].all()
    assert a["bbox"] == [50.0, 30.0, 100.0, 60.0] and a["quality"] == 9 and a["source"] == "person"
    sa1b = client.get("/api/projects/1/export?format=sa1b").json()
    assert [rec["image"]["image_id"] for rec in sa1b] == [1, 2]
    assert mask_utils.area(sa1b[1]["annotations"][0]["segmentation"]) == 200
    assert client.get("/api/projects/1/export?format=pickle").status_code == 422


def test_openapi_schema_lists_the_api(env) -> None:
    _, client, _ = env
    paths = client.get("/api/openapi.json").json()["paths"]
    for p in ["/api/login", "/api/images/{image_id}/annotations", "/api/annotations/{annotation_id}",
              "/api/projects/{project_id}/export", "/api/images/{image_id}/embedding"]:  # fmt: skip
        assert p in paths


# ---- model: embeddings, decoder, stage-2 pre-fill ----------------------------------------------------------------


def test_embedding_computed_once_and_cached_on_disk(env) -> None:
    app, client, tmp_path = env
    r = client.get("/api/images/1/embedding")
    assert r.status_code == 200 and r.headers["x-embedding-shape"] == "1,32,16,16"
    assert len(r.content) == 4 * 32 * 16 * 16
    cached = list((tmp_path / "data" / "cache").rglob("*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = client.get("/api/images/1/embedding")
    assert again.content == r.content and cached[0].stat().st_mtime_ns == stamp
    info = client.get("/api/model").json()
    assert info["embedding_shape"] == [1, 32, 16, 16] and info["image_size"] == 256
    graph = onnx.load_model_from_string(client.get(info["decoder_url"]).content).graph
    assert [i.name for i in graph.input] == PAGE_CLICK_INPUTS
    graph = onnx.load_model_from_string(client.get("/api/model/decoder.image.onnx").content).graph
    assert [i.name for i in graph.input] == PAGE_IMAGE_INPUTS
    graph = onnx.load_model_from_string(client.get("/api/model/decoder.upscale.onnx").content).graph
    assert [i.name for i in graph.input] == PAGE_UPSCALE_INPUTS
    assert client.get("/api/model/decoder.other.onnx").status_code == 404


def test_cache_is_keyed_by_the_weights_and_the_exporter(tmp_path: Path, monkeypatch) -> None:
    """New weights never get another model's embeddings or decoder; a new exporter never serves an old export."""
    import torch

    from segany.build import sam_model_registry
    from segany.engine import model as engine_model

    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        files.append(tmp_path / f"w{seed}.pth")
        torch.save(sam_model_registry["tiny"]().state_dict(), files[-1])
    a, b = (
        engine_model.ModelService(ModelSpec(kind="tiny", checkpoint=str(f)), tmp_path / "c") for f in files
    )
    assert a.key != b.key and a.key.startswith("tiny-") and len(a.key) == len("tiny-") + 16
    a.warm_up()  # what `segany annotate` runs before it listens: the export is then on disk
    exported = a.decoder_path()
    assert exported.exists() and exported.parent.parent.name == a.key
    assert engine_model.decoder_export_tag() in exported.name
    stamp = exported.stat().st_mtime_ns
    again = engine_model.ModelService(ModelSpec(kind="tiny", checkpoint=str(files[0])), tmp_path / "c")
    assert again.decoder_path() == exported and exported.stat().st_mtime_ns == stamp  # a restart reuses it
    monkeypatch.setattr(engine_model, "decoder_export_tag", lambda: "newexporter1")
    assert again.decoder_path() != exported  # an upgraded exporter writes its own file


def test_export_tag_follows_the_traced_modules_and_versions(tmp_path: Path, monkeypatch) -> None:
    """A patched module the export traces (not only onnx_export.py), or another torch, names a new decoder."""
    import importlib.metadata
    import importlib.util

    from segany.engine import model as engine_model

    base = engine_model.decoder_export_tag()
    assert base == engine_model.decoder_export_tag() and len(base) == 12
    real_find, real_version = importlib.util.find_spec, importlib.metadata.version
    patched = tmp_path / "transformer.py"
    patched.write_text(Path(real_find("segany.modeling.transformer").origin).read_text() + "\n# patched\n")

    def find(name, *a):
        spec = real_find(name, *a)
        if name == "segany.modeling.transformer":
            spec = importlib.util.spec_from_file_location(name, patched)
        return spec

    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", find)
        assert engine_model.decoder_export_tag() != base
    with monkeypatch.context() as m:
        m.setattr(importlib.metadata, "version", lambda d: "0.0.1" if d == "torch" else real_version(d))
        assert engine_model.decoder_export_tag() != base
    assert engine_model.decoder_export_tag() == base


def test_prefill_marks_model_masks_and_runs_once(tmp_path: Path) -> None:
    make_images(tmp_path / "images")
    # Thresholds off: the random tiny model is never "confident"; the real default keeps IoU > 0.9 only.
    app = create_app(
        _settings(tmp_path, prefill_points_per_side=4, prefill_iou_thresh=0.0, prefill_stability_thresh=0.0)
    )
    c = TestClient(app, base_url=BASE)
    c.headers["X-CSRF-Token"] = c.post("/api/login", json={"username": "admin", "password": PASSWORD}).json()[
        "csrf_token"
    ]
    first = c.post("/api/images/1/prefill").json()
    assert first["created"] >= 1 and first["seconds"] > 0
    made = [a for a in first["annotations"] if a["source"] == "model"]
    assert len(made) == first["created"]
    assert all(a["created_by"] is None and a["seconds"] > 0 and a["predicted_iou"] is not None for a in made)
    # People add the rest; their masks are marked as theirs.
    mine = _save(c, seconds=12.0)
    assert mine["source"] == "person" and mine["created_by"] == "admin"
    second = c.post("/api/images/1/prefill").json()
    assert second["created"] == 0 and len(second["annotations"]) == first["created"] + 1


def test_prefill_reuses_the_pages_embedding_and_caches_its_own(tmp_path: Path) -> None:
    """Pre-fill never runs the encoder on the whole image twice: after the page's embedding request it decodes
    from the cache (the same masks as a pre-fill that encodes), and a pre-fill of a new image leaves the embedding
    cached for the page."""
    make_images(tmp_path / "images")
    app = create_app(
        _settings(tmp_path, prefill_points_per_side=4, prefill_iou_thresh=0.0, prefill_stability_thresh=0.0)
    )
    c = TestClient(app, base_url=BASE)
    c.headers["X-CSRF-Token"] = c.post("/api/login", json={"username": "admin", "password": PASSWORD}).json()[
        "csrf_token"
    ]
    service = app.state.model
    runs: list[int] = []
    service.sam().image_encoder.register_forward_pre_hook(lambda _m, _a: runs.append(1))

    def model_masks(body: dict) -> list[tuple[str, float]]:
        return sorted((a["rle"]["counts"], round(a["predicted_iou"], 5)) for a in body["annotations"])

    assert c.get("/api/images/1/embedding").status_code == 200 and len(runs) == 1
    cached = c.post("/api/images/1/prefill").json()
    assert cached["created"] >= 1 and len(runs) == 1  # the page's embedding, not a second encoder run
    fresh = c.post("/api/images/2/prefill").json()
    assert fresh["created"] >= 1 and len(runs) == 2
    assert c.get("/api/images/2/embedding").status_code == 200 and len(runs) == 2  # pre-fill cached it
    # the same masks as encoding afresh: a new server with an empty cache
    make_images(tmp_path / "b" / "images")
    other = create_app(
        _settings(
            tmp_path / "b", prefill_points_per_side=4, prefill_iou_thresh=0.0, prefill_stability_thresh=0.0
        )
    )
    c2 = TestClient(other, base_url=BASE)
    c2.headers["X-CSRF-Token"] = c2.post(
        "/api/login", json={"username": "admin", "password": PASSWORD}
    ).json()["csrf_token"]
    assert model_masks(c2.post("/api/images/1/prefill").json()) == model_masks(cached)


def test_cli_refuses_to_start_without_password(tmp_path: Path, monkeypatch, capsys) -> None:
    import argparse

    from segany.cli import annotate

    make_images(tmp_path / "images")
    monkeypatch.delenv("SEGANY_ADMIN_PASSWORD", raising=False)
    p = argparse.ArgumentParser()
    annotate.add_parser(p.add_subparsers())
    for extra in ([], ["--host", "0.0.0.0", "--dev"]):
        args = p.parse_args(["annotate", str(tmp_path / "images"), "--data-dir", str(tmp_path / "d"), *extra])
        assert annotate.run(args) == 2
    out = capsys.readouterr().out
    assert "no admin password" in out and "local-only" in out


# ---- readiness: page assets, background prefetch, pre-fill progress ------------------------------------------


def test_server_start_refuses_missing_page_assets(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without build.sh the page's runtime would 404 in the browser and nothing would say so: refused at start."""
    import argparse
    import shutil

    from segany.cli import annotate
    from segany.engine import app as engine_app

    web = tmp_path / "static"
    shutil.copytree(engine_app.WEB_DIR, web, ignore=shutil.ignore_patterns("vendor"))
    missing = engine_app.missing_web_assets(web)
    assert "vendor/ort/ort.wasm.min.mjs" in missing and "vendor/ort/ort-wasm-simd-threaded.wasm" in missing
    assert "app.js" not in missing and "style.css" not in missing
    with pytest.raises(ConfigError, match=r"bash \S*segany/engine/web/build\.sh"):
        engine_app.check_web_assets(web)

    make_images(tmp_path / "images")
    monkeypatch.setattr(engine_app, "WEB_DIR", web)
    monkeypatch.setenv("SEGANY_ADMIN_PASSWORD", PASSWORD)
    p = argparse.ArgumentParser()
    annotate.add_parser(p.add_subparsers())
    args = p.parse_args(
        ["annotate", str(tmp_path / "images"), "--data-dir", str(tmp_path / "d"), "--model", "tiny"]
    )
    assert annotate.run(args) == 2
    out = capsys.readouterr().out
    assert "assets are missing" in out and "segany/engine/web/build.sh" in out and "ort.wasm.min.mjs" in out


def test_build_script_copies_every_runtime_file_the_page_loads() -> None:
    """The start-up check and build.sh agree: every vendor file the page names is one build.sh copies."""
    import re

    from segany.engine import app as engine_app

    script = engine_app.BUILD_SCRIPT.read_text()
    copied = {f"vendor/ort/{name}" for name in re.search(r"for f in ([^;]+);", script).group(1).split()}
    needed = {rel for rel in engine_app.web_assets() if rel.startswith("vendor/")}
    assert needed and needed <= copied, needed - copied


def _wait_for(calls: list, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while not calls:
        assert time.monotonic() < deadline, "never called"
        time.sleep(0.01)


def test_prefetch_computes_the_next_images_embedding(tmp_path: Path) -> None:
    """Opening an image queues the next ones (the page's order); the next request then reads the cached file."""
    paths = make_images(tmp_path / "images", [(120, 200), (96, 160), (80, 80)])
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    app = create_app(_settings(tmp_path, prefetch_ahead=1))
    model = app.state.model
    c = TestClient(app, base_url=BASE)
    c.headers["Authorization"] = (
        "Bearer "
        + c.post("/api/login", json={"username": "admin", "password": PASSWORD, "bearer": True}).json()[
            "token"
        ]
    )
    images = c.get("/api/projects/1/images").json()
    assert [im["file_name"] for im in images] == [p.name for p in paths]
    first = c.get(f"/api/images/{images[0]['id']}/embedding")
    assert first.status_code == 200
    assert c.post(f"/api/images/{images[0]['id']}/ready").status_code == 204  # as the page does once loaded
    assert model.prefetch_idle(PATIENCE_S)
    assert model.prefetched == [shas[1]]  # the next image only (prefetch_ahead=1), not the one after
    nxt = model.embedding_path(shas[1])
    assert nxt.exists() and not model.embedding_path(shas[2]).exists()
    stamp = nxt.stat().st_mtime_ns
    second = c.get(f"/api/images/{images[1]['id']}/embedding")
    assert second.status_code == 200 and nxt.stat().st_mtime_ns == stamp  # served from the prefetch
    assert np.frombuffer(second.content, "<f4").size == 32 * 16 * 16
    assert c.post(f"/api/images/{images[1]['id']}/ready").status_code == 204
    assert model.prefetch_idle(PATIENCE_S)
    assert model.prefetched == [shas[1], shas[2]]  # and opening it queued the one after
    model.close()


def test_prefetch_waits_until_the_page_is_ready(tmp_path: Path, monkeypatch) -> None:
    """An embedding served to a page holds the background prefetch until the page says it can be clicked (its
    decoder load and warm-up are the page's heaviest CPU moment), not just for the quiet moment after a request."""
    import segany.engine.model as model_mod

    monkeypatch.setattr(model_mod, "PAGE_OPEN_HOLD_S", 600.0)  # held until told, however slow the machine
    paths = make_images(tmp_path / "images", [(120, 200), (96, 160)])
    nxt = hashlib.sha256(paths[1].read_bytes()).hexdigest()
    app = create_app(_settings(tmp_path, prefetch_ahead=1))
    model = app.state.model
    c = TestClient(app, base_url=BASE)
    login = c.post("/api/login", json={"username": "admin", "password": PASSWORD, "bearer": True})
    c.headers["Authorization"] = "Bearer " + login.json()["token"]
    assert c.get("/api/images/1/embedding").status_code == 200
    time.sleep(3 * model_mod.PREFETCH_QUIET_S)  # well past the quiet moment
    assert not model.prefetch_idle(0.0) and model.prefetched == [] and not model.embedding_path(nxt).exists()
    assert c.post("/api/images/999/ready").status_code == 404  # only images the caller can see
    assert c.post("/api/images/1/ready").status_code == 204
    assert model.prefetch_idle(PATIENCE_S) and model.prefetched == [nxt]
    model.close()


def test_prefetch_gives_way_and_never_computes_twice(tmp_path: Path, monkeypatch) -> None:
    """A prefetch dropped from the queue stops; an on-demand request for the image being prefetched waits for it
    instead of computing it again (the prefetch is not starved of CPU)."""
    import threading

    from segany.engine import model as engine_model
    from segany.engine.model import ModelService

    # never starved, however busy the machine
    monkeypatch.setattr(engine_model, "PREFETCH_STARVED_MARGIN", 0.0)
    model = ModelService(ModelSpec(kind="tiny"), tmp_path / "cache")
    rgb = np.full((64, 64, 3), 90, np.uint8)
    gate, calls = threading.Event(), []

    def slow(name: str):
        def load() -> np.ndarray:
            calls.append(name)
            assert gate.wait(PATIENCE_S)
            return rgb

        return load

    model.prefetch([("a" * 64, slow("a"))])
    _wait_for(calls)  # the worker is loading image a
    model.prefetch([("b" * 64, lambda: rgb)])  # the annotator moved elsewhere: a is no longer wanted
    gate.set()
    assert model.prefetch_idle(PATIENCE_S)
    assert not model.embedding_path("a" * 64).exists() and model.prefetched == ["b" * 64]

    gate.clear()
    calls.clear()
    model.prefetch([("c" * 64, slow("c"))])
    _wait_for(calls)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(model.embedding("c" * 64, slow("c-on-demand"))))
    t.start()
    gate.set()
    t.join(PATIENCE_S)
    assert got and calls == ["c"]  # computed once, by the prefetch the request waited for
    assert model.prefetch_idle(PATIENCE_S) and model.prefetched == ["b" * 64, "c" * 64]
    model.close()


def test_a_starved_prefetch_gives_way_to_a_request_for_its_own_image(tmp_path: Path, monkeypatch) -> None:
    """On a busy machine the nice-19 prefetch crawls: a request for the image it is computing does not wait for
    it; the prefetch stops at its next encoder layer and the request computes the image at normal priority."""
    import threading

    from segany.engine import model as engine_model
    from segany.engine.model import ModelService

    monkeypatch.setattr(engine_model, "PREFETCH_STARVED_MARGIN", 1e6)  # any thread is "starved" ...
    monkeypatch.setattr(engine_model, "PREFETCH_STARVED_AFTER_S", 0.0)  # ... from its second encoder layer
    model = ModelService(ModelSpec(kind="tiny"), tmp_path / "cache")
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    c = "c" * 64
    calls: list[str] = []
    started, gate = threading.Event(), threading.Event()

    def hold(_module, _args) -> None:  # the prefetch is inside the encoder
        if threading.current_thread().name == "segany-prefetch":
            started.set()
            assert gate.wait(PATIENCE_S)

    def load(name: str):
        return lambda: calls.append(name) or rgb

    model.sam().image_encoder.register_forward_pre_hook(hold)
    model.prefetch([(c, load("prefetch"))])
    assert started.wait(PATIENCE_S)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(model.embedding(c, load("on-demand"))))
    t.start()
    deadline = time.monotonic() + PATIENCE_S
    while c not in model._demanded:
        assert time.monotonic() < deadline, "the request never registered"
        time.sleep(0.01)
    gate.set()
    t.join(PATIENCE_S)
    assert got and calls == ["prefetch", "on-demand"]
    assert model.prefetch_idle(PATIENCE_S)
    assert model.gave_way_starved == [c] and model.prefetched == []  # not queued again: it is cached now
    ref = ModelService(ModelSpec(kind="tiny"), tmp_path / "ref").embedding(c, lambda: rgb)
    assert got[0] == ref  # the same bytes as an undisturbed computation
    model.close()


def test_cpu_share_of_a_thread(monkeypatch) -> None:
    """The starvation measure: a thread that sleeps gets no CPU share, so it is starved early in its work but not
    once it is all but done; one that computes is not starved (margin 1 % here, so that a busy test machine
    cannot make it look starved)."""
    from segany.engine import model as engine_model
    from segany.engine.model import PREFETCH_STARVED_AFTER_S, _CpuShare

    idle = _CpuShare(steps=10)
    assert not idle.starved()  # the first call only starts the clock
    time.sleep(PREFETCH_STARVED_AFTER_S * 1.5)
    assert idle.starved()  # 1 step of 10 done, no CPU: starting again is faster
    idle.calls = 9
    assert not idle.starved()  # 10 of 10: finishing is faster, however slow
    monkeypatch.setattr(engine_model, "PREFETCH_STARVED_MARGIN", 0.01)
    busy = _CpuShare(steps=10)
    assert not busy.starved()
    start = time.thread_time()
    while time.thread_time() - start < PREFETCH_STARVED_AFTER_S * 2:
        pass
    assert not busy.starved()


def test_a_prefill_makes_a_running_prefetch_give_way(tmp_path: Path) -> None:
    """A pre-fill of an image whose embedding is cached does not wait behind a background prefetch of another
    image (nice 19, holding the compute lock): the prefetch stops at its next encoder layer, and runs again after."""
    import threading

    from segany.engine.model import ModelService

    model = ModelService(ModelSpec(kind="tiny"), tmp_path / "cache")
    rgb = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    x, y = "x" * 64, "y" * 64
    model.embedding(x, lambda: rgb)  # the page opened x
    started, gate = threading.Event(), threading.Event()

    def hold(_module, _args) -> None:  # the prefetch is inside the encoder, holding the compute lock
        if threading.current_thread().name == "segany-prefetch":
            started.set()
            assert gate.wait(PATIENCE_S)

    model.sam().image_encoder.register_forward_pre_hook(hold)
    model.prefetch([(y, lambda: rgb)])
    assert started.wait(PATIENCE_S)
    out: list = []
    t = threading.Thread(target=lambda: out.append(model.prefill(x, lambda: rgb, 4, 0.0, 0.0)))
    t.start()
    deadline = time.monotonic() + PATIENCE_S
    while x not in model._demanded:  # the pre-fill has asked for the machine
        assert time.monotonic() < deadline, "the pre-fill never asked the prefetch to give way"
        time.sleep(0.01)
    gate.set()
    t.join(PATIENCE_S)
    assert out and len(out[0][0]) >= 1
    assert model.prefetch_idle(PATIENCE_S)
    # y is still wanted: the prefetch that gave way ran again once the pre-fill was done
    assert model.embedding_path(y).exists() and model.prefetched == [y]
    model.close()


def test_prefill_reports_progress(tmp_path: Path) -> None:
    """While the POST runs, GET .../prefill/progress counts the grid points decoded (the page shows n/N)."""
    import threading

    make_images(tmp_path / "images")
    app = create_app(
        _settings(tmp_path, prefill_points_per_side=4, prefill_iou_thresh=0.0, prefill_stability_thresh=0.0)
    )
    c = TestClient(app, base_url=BASE)
    c.headers["Authorization"] = (
        "Bearer "
        + c.post("/api/login", json={"username": "admin", "password": PASSWORD, "bearer": True}).json()[
            "token"
        ]
    )
    assert c.get("/api/images/1/prefill/progress").json() == {"running": False, "done": 0, "total": 0}
    seen: list[tuple[int, int]] = []
    real = app.state.model.prefill

    def observed(*a, progress=None, **kw):
        def spy(done: int, total: int) -> None:
            progress(done, total)
            seen.append(tuple(c.get("/api/images/1/prefill/progress").json().values())[1:])

        return real(*a, progress=spy, **kw)

    app.state.model.prefill = observed
    out: list = []
    t = threading.Thread(target=lambda: out.append(c.post("/api/images/1/prefill")))
    t.start()
    t.join(PATIENCE_S)
    assert out and out[0].status_code == 200
    assert seen[0] == (0, 16) and seen[-1] == (16, 16) and len(seen) >= 3
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert c.get("/api/images/1/prefill/progress").json()["running"] is False
