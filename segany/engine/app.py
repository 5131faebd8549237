"""The annotation server: a FastAPI app built by :func:`create_app` (no work at import time).

Stage 1 of the data engine: the server computes each image's embedding once (cached on disk) and serves the
exported decoder; the page decodes masks in the browser on every click and saves accepted masks here. HQ-SAM and
SAM 2, whose decoders read more than the stride-16 embedding, decode clicks here instead
(``POST /api/images/{id}/decode``, `SamPredictor` on the cached features). Stage 2:
``POST /api/images/{id}/prefill`` adds the masks the automatic generator is confident about, marked as made by
the model. The OpenAPI schema is at ``/api/openapi.json``.
"""

import base64
import binascii
import json
import logging
import mimetypes
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi import Path as FastApiPath
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tqdm import tqdm

from segany import images as image_errors
from segany.engine import exports, media, security, store
from segany.engine.db import Annotation, Image, init_db, make_engine
from segany.engine.model import ModelService, ModelUnavailable
from segany.engine.schemas import (
    AnnotationIn,
    AnnotationOut,
    AnnotationUpdate,
    DecodeIn,
    DecodeOut,
    ErrorOut,
    ImageOut,
    ImageStatusIn,
    LoginIn,
    LoginOut,
    MemberIn,
    ModelInfo,
    PrefillOut,
    PrefillProgress,
    ProjectIn,
    ProjectOut,
    UserIn,
)
from segany.engine.settings import ConfigError, EngineSettings

log = logging.getLogger("segany.engine")
WEB_DIR = Path(__file__).parent / "web" / "static"
BUILD_SCRIPT = WEB_DIR.parent / "build.sh"
# onnxruntime-web's wasm runtime: loaded by ort itself (by file name), so no page script names it.
ORT_RUNTIME_FILES = ("vendor/ort/ort-wasm-simd-threaded.mjs", "vendor/ort/ort-wasm-simd-threaded.wasm")
# A quoted path the page loads from the static folder: "./x.js", "./vendor/ort/y.mjs", "/static/z.css", ...
_ASSET_REF = re.compile(r"[\"'](\./|/static/)([\w][\w./-]*\.(?:m?js|wasm|css))[\"'?#]")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in [
        (400, "malformed request"), (401, "not logged in"), (403, "not allowed (role or CSRF/origin check)"),
        (404, "no such object in a project you can access"), (409, "stale version: reload and re-apply"),
        (413, "body, file or pixel count over the cap"), (415, "not an allowed image format"),
        (429, "too many failed logins"), (503, "model unavailable or database busy"),
    ]
}  # fmt: skip
MAX_DB_INT = 2**31 - 1  # ids and versions beyond a 32-bit column would be a driver error (500), not a 404
DbId = Annotated[int, FastApiPath(ge=1, le=MAX_DB_INT)]


def _annotation_out(a: Annotation, creator: str | None, image: Image) -> AnnotationOut:
    return AnnotationOut(
        id=a.id,
        image_id=a.image_id,
        version=a.version,
        label=a.label,
        rle={"size": [image.height, image.width], "counts": a.rle_counts},
        area=a.area,
        bbox=json.loads(a.bbox),
        source=a.source,
        created_by=creator,
        seconds=a.seconds,
        quality=a.quality,
        predicted_iou=a.predicted_iou,
        prompts=json.loads(a.prompts),
        deleted=a.deleted,
    )


def _image_error_status(err: image_errors.ImageError) -> int:
    if isinstance(err, image_errors.ImageTooLarge):
        return 413
    if isinstance(err, image_errors.UnsupportedFormat):
        return 415
    return 422


def import_image_dir(engine: Any, settings: EngineSettings, project_id: int) -> int:
    """Add the images of IMAGE_DIR that the project does not have yet; unreadable files are logged and skipped."""
    known = store.known_paths(engine, project_id, "dir")
    new = [p for p in media.scan_dir(settings.image_dir, skip=settings.data_dir) if p not in known]
    added = 0
    for rel in tqdm(new, desc="importing images", disable=not new):
        path = media.resolve(settings.image_dir, rel)
        if path is None:
            continue
        try:
            data = path.read_bytes()
            img = media.decode(
                data, max_pixels=settings.max_pixels, max_bytes=settings.max_upload_bytes, name=rel
            )
        except image_errors.ImageError as err:
            log.warning("skipping %s", err)
            continue
        store.add_image(engine, project_id, file_name=media.display_name(rel), storage="dir", rel_path=rel,
                        sha256=img.sha256, mime=img.mime, width=img.width, height=img.height)  # fmt: skip
        added += 1
    return added


class _RevalidatedStaticFiles(StaticFiles):
    """The page's files, kept by the browser and revalidated on each use (ETag): a reload gets 304s instead of
    the 14 MB wasm runtime again, and an upgrade is never served stale."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def web_assets(web_dir: Path | None = None) -> set[str]:
    """The files the page loads, relative to the static folder: index.html and every path it and the scripts it
    loads name (imports, workers, stylesheets; followed from index.html), and onnxruntime-web's runtime."""
    web_dir = web_dir or WEB_DIR
    wanted, todo = {*ORT_RUNTIME_FILES}, ["index.html"]
    while todo:
        rel = todo.pop()
        if rel in wanted and rel != "index.html":
            continue
        wanted.add(rel)
        src = web_dir / rel
        if rel.startswith("vendor/") or not src.is_file() or src.suffix == ".wasm":
            continue  # third-party files are not scanned (their runtime files are listed above)
        for prefix, ref in _ASSET_REF.findall(src.read_text(encoding="utf-8")):
            path = ref if prefix == "/static/" else (Path(rel).parent / ref).as_posix()
            if path not in wanted:
                todo.append(path)
    return wanted


def missing_web_assets(web_dir: Path | None = None) -> list[str]:
    """`web_assets` that are not there (empty once `build.sh` has been run)."""
    web_dir = web_dir or WEB_DIR
    return sorted(rel for rel in web_assets(web_dir) if not (web_dir / rel).is_file())


def check_web_assets(web_dir: Path | None = None) -> None:
    """Refuse to serve a page that cannot run: raises `ConfigError` naming the missing files and the fix."""
    web_dir = web_dir or WEB_DIR
    missing = missing_web_assets(web_dir)
    built = [rel for rel in missing if rel.startswith("vendor/")]
    if built:
        try:
            script = BUILD_SCRIPT.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            script = BUILD_SCRIPT.resolve()
        raise ConfigError(
            f"the annotation page's assets are missing ({', '.join(built)} in {web_dir}); build them with: "
            f"bash {script}  (needs node/npm; copies onnxruntime-web into static/vendor/)"
        )
    if missing:
        raise ConfigError(
            f"the annotation page's files {', '.join(missing)} are missing from {web_dir} (named by its scripts "
            "or HTML): a broken install or checkout; reinstall segany"
        )


def prefetch_order(
    engine: Any, settings: EngineSettings, project_id: int, after: int | None
) -> list[tuple[str, Callable[[], Any]]]:
    """The next ``settings.prefetch_ahead`` images the page opens, as ``(sha256, load_rgb)`` for
    `ModelService.prefetch`: those after image ``after`` in the project's order ("Done" opens the next), or,
    with ``after=None``, the first image not done (where the page starts) and those after it."""
    if settings.prefetch_ahead <= 0:
        return []
    images = [img for img, _ in store.list_images(engine, project_id)]
    if after is None:
        start = next((i for i, img in enumerate(images) if not img.done), 0)
        chosen = images[start : start + settings.prefetch_ahead]
    else:
        at = next((i for i, img in enumerate(images) if img.id == after), None)
        chosen = [] if at is None else images[at + 1 : at + 1 + settings.prefetch_ahead]
    return [(img.sha256, _rgb_loader(settings, img)) for img in chosen]


def _image_file(settings: EngineSettings, img: Image) -> Path | None:
    root = settings.image_dir if img.storage == "dir" else settings.data_dir / "media"
    return media.resolve(root, img.rel_path)


def _rgb_loader(settings: EngineSettings, img: Image) -> Callable[[], Any]:
    path, name = _image_file(settings, img), img.file_name

    def load() -> Any:
        if path is None:
            raise FileNotFoundError(f"image file of {name!r} missing")
        return media.decode(
            path.read_bytes(), max_pixels=settings.max_pixels, max_bytes=1 << 40, name=name
        ).rgb

    return load


def create_app(settings: EngineSettings) -> FastAPI:
    """Build the app: open (and create) the database, set the admin account, import IMAGE_DIR."""
    settings.check()
    mimetypes.add_type("text/javascript", ".mjs")
    mimetypes.add_type("application/wasm", ".wasm")
    engine = make_engine(settings.db_url)
    init_db(engine)
    if settings.admin_password is None:  # check() sets one or raises
        raise RuntimeError("settings.check() left no admin password")
    admin_id = store.set_user(engine, settings.admin_user, settings.admin_password, is_admin=True)
    project_id = store.ensure_project(
        engine, settings.project_name or settings.image_dir.resolve().name, [admin_id]
    )
    import_image_dir(engine, settings, project_id)
    model = ModelService(settings.model, settings.data_dir / "cache")
    media_dir = settings.data_dir / "media"
    throttle = security.LoginThrottle()
    prefills: dict[int, tuple[int, int]] = {}  # image id -> (points done, total) of a running pre-fill
    prefills_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        model.close()  # stop background prefetching

    app = FastAPI(
        lifespan=lifespan,
        title="segany annotation engine",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # the bundled docs page loads scripts from a CDN, which the CSP forbids
        redoc_url=None,
        max_body_size=settings.max_json_bytes,
        responses=ERROR_RESPONSES,
    )
    app.add_middleware(security.SecurityHeadersMiddleware)
    app.state.engine = engine
    app.state.settings = settings
    app.state.model = model
    app.state.project_id = project_id

    @app.exception_handler(store.NotFound)
    async def _not_found(_r: Request, _e: store.NotFound) -> JSONResponse:
        return JSONResponse({"detail": "not found"}, status_code=404)

    @app.exception_handler(store.Conflict)
    async def _conflict(_r: Request, e: store.Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(e), "current_version": e.current_version}, status_code=409)

    @app.exception_handler(ModelUnavailable)
    async def _no_model(_r: Request, e: ModelUnavailable) -> JSONResponse:
        log.error("%s", e)
        return JSONResponse({"detail": str(e)}, status_code=503)

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OperationalError)
    async def _db_busy(_r: Request, e: Exception) -> JSONResponse:
        log.error("database error: %s", e)
        return JSONResponse({"detail": "database busy, retry"}, status_code=503, headers={"Retry-After": "1"})

    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, "cross-origin request refused")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")

    def principal(request: Request) -> store.Principal:
        model.touch()  # background prefetching waits for a quiet moment
        token, via_cookie = None, False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
        else:
            token, via_cookie = request.cookies.get(security.SESSION_COOKIE), True
        who = store.principal(engine, token) if token else None
        if who is None:
            raise HTTPException(401, "log in first")
        if via_cookie and request.method not in SAFE_METHODS:
            same_origin(request)
            sent = request.headers.get(security.CSRF_HEADER, "")
            if not security.hmac.compare_digest(sent.encode(), who.csrf_token.encode()):
                raise HTTPException(403, "missing or wrong CSRF token")
        return who

    Who = Annotated[store.Principal, Depends(principal)]

    def admin(who: Who) -> store.Principal:
        if not who.is_admin:
            raise HTTPException(403, "admins only")
        return who

    Admin = Annotated[store.Principal, Depends(admin)]

    # ---- pages --------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", _RevalidatedStaticFiles(directory=WEB_DIR, follow_symlink=False), name="static")

    @app.get("/api/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    # ---- auth and administration ----------------------------------------------------------------------------

    @app.post("/api/login")
    def login(body: LoginIn, request: Request, response: Response) -> LoginOut:
        same_origin(request)
        client = request.client.host if request.client else "?"
        # Per client address (and per name from that address): a flood from elsewhere cannot lock the admin out.
        keys = (f"ip:{client}", f"user:{body.username}@{client}")
        if throttle.blocked(*keys):
            raise HTTPException(429, "too many failed logins; wait a few minutes")
        user = store.authenticate(engine, body.username, body.password)
        if user is None:
            throttle.failed(*keys)
            raise HTTPException(401, "wrong user name or password")
        throttle.succeeded(*keys)
        token, csrf = store.new_session(engine, user.id, bearer=body.bearer, ttl_s=settings.session_ttl_s)
        if body.bearer:
            return LoginOut(username=user.username, is_admin=user.is_admin, token=token)
        response.set_cookie(security.SESSION_COOKIE, token, max_age=int(settings.session_ttl_s), httponly=True,
                            secure=True, samesite="strict", path="/")  # fmt: skip
        return LoginOut(username=user.username, is_admin=user.is_admin, csrf_token=csrf)

    @app.post("/api/logout", status_code=204)
    def logout(who: Who, request: Request, response: Response) -> None:
        token = (
            request.cookies.get(security.SESSION_COOKIE) or request.headers["authorization"].split(" ", 1)[1]
        )
        store.end_session(engine, token.strip())
        response.delete_cookie(
            security.SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict"
        )

    @app.get("/api/me")
    def me(who: Who) -> LoginOut:
        return LoginOut(
            username=who.username, is_admin=who.is_admin, csrf_token=None if who.bearer else who.csrf_token
        )

    @app.post("/api/users", status_code=201)
    def add_user(body: UserIn, _who: Admin) -> dict[str, int]:
        return {"id": store.create_user(engine, body.username, body.password, is_admin=body.is_admin)}

    @app.post("/api/projects", status_code=201)
    def add_project(body: ProjectIn, who: Admin) -> ProjectOut:
        return ProjectOut(id=store.create_project(engine, body.name, who.user_id), name=body.name)

    @app.post("/api/projects/{project_id}/members", status_code=204)
    def add_member(project_id: DbId, body: MemberIn, _who: Admin) -> None:
        store.add_member(engine, project_id, body.username)

    # ---- projects and images ------------------------------------------------------------------------------

    @app.get("/api/projects")
    def projects(who: Who) -> list[ProjectOut]:
        return [ProjectOut(id=p.id, name=p.name) for p in store.projects_for(engine, who)]

    def image_out(img: Image, n: int) -> ImageOut:
        return ImageOut(id=img.id, project_id=img.project_id, file_name=img.file_name, width=img.width,
                        height=img.height, done=img.done, n_annotations=n)  # fmt: skip

    @app.get("/api/projects/{project_id}/images")
    def project_images(project_id: DbId, who: Who) -> list[ImageOut]:
        store.project_for(engine, who, project_id)
        return [image_out(img, n) for img, n in store.list_images(engine, project_id)]

    @app.post("/api/projects/{project_id}/images", status_code=201, max_body_size=settings.max_upload_bytes)
    def upload(
        project_id: DbId, who: Who, file: Annotated[UploadFile, File()], response: Response
    ) -> ImageOut:
        store.project_for(engine, who, project_id)
        data = file.file.read(settings.max_upload_bytes + 1)
        name = media.display_name(file.filename or "upload")
        try:
            img = media.decode(
                data, max_pixels=settings.max_pixels, max_bytes=settings.max_upload_bytes, name=name
            )
        except image_errors.ImageError as err:
            raise HTTPException(_image_error_status(err), str(err)) from None
        rel = media.store_upload(media_dir, img.sha256, data)
        image_id, created = store.add_image(engine, project_id, file_name=name, storage="upload", rel_path=rel,
                                            sha256=img.sha256, mime=img.mime, width=img.width, height=img.height)  # fmt: skip
        if not created:
            response.status_code = 200
        return image_out(store.image_for(engine, who, image_id), 0)

    @app.get("/api/images/{image_id}")
    def image_meta(image_id: DbId, who: Who) -> ImageOut:
        img = store.image_for(engine, who, image_id)
        return image_out(img, len(store.annotations_of(engine, image_id)))

    @app.put("/api/images/{image_id}/status", status_code=204)
    def image_status(image_id: DbId, body: ImageStatusIn, who: Who) -> None:
        store.image_for(engine, who, image_id)
        store.set_done(engine, image_id, body.done)

    def image_path(img: Image) -> Path:
        path = _image_file(settings, img)
        if path is None:
            raise HTTPException(404, "image file missing")
        return path

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: DbId, who: Who) -> FileResponse:
        img = store.image_for(engine, who, image_id)
        return FileResponse(image_path(img), media_type=img.mime, content_disposition_type="inline",
                            filename=f"image-{img.id}", headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip

    def load_rgb(img: Image) -> Any:
        data = image_path(img).read_bytes()
        return media.decode(data, max_pixels=settings.max_pixels, max_bytes=1 << 40, name=img.file_name).rgb

    @app.get("/api/images/{image_id}/embedding", response_class=Response)
    def embedding(image_id: DbId, who: Who, data: bool = True) -> Response:
        """The image's float32 embedding (computed and cached on first use). ``?data=false``: computed and cached
        all the same, answered 204 without the bytes (a page whose clicks the server decodes never reads them)."""
        img = store.image_for(engine, who, image_id)
        if data:
            body = model.embedding(img.sha256, lambda: load_rgb(img))
        else:
            model.ensure_embedding(img.sha256, lambda: load_rgb(img))
        # The images the annotator meets next: computed in the background while this one is annotated, once
        # the page says it is ready (`image_ready`), so that they do not slow its decoder's load.
        model.hold_prefetch()
        model.prefetch(prefetch_order(engine, settings, img.project_id, after=img.id))
        shape = ",".join(map(str, model.info()["embedding_shape"]))
        headers = {"X-Embedding-Shape": shape, "Cache-Control": "private, max-age=3600"}
        if not data:
            return Response(status_code=204, headers=headers)
        return Response(body, media_type="application/octet-stream", headers=headers)

    @app.post("/api/images/{image_id}/ready", status_code=204)
    def image_ready(image_id: DbId, who: Who) -> None:
        """The page has opened this image and can be clicked: background prefetching may start."""
        store.image_for(engine, who, image_id)
        model.page_ready()

    @app.post("/api/images/{image_id}/decode")
    def decode(image_id: DbId, body: DecodeIn, who: Who) -> DecodeOut:
        """One prompt (image pixels) through `SamPredictor` on the image's cached features: the low-res logits and
        scores as the predictor returns them. The page uses it for HQ-SAM and SAM 2 (model info ``decode:
        "server"``); it answers for every model."""
        from segany.predictor import PromptError

        img = store.image_for(engine, who, image_id)
        if not body.points and body.box is None:
            raise HTTPException(422, "give at least one point or a box")
        s = int(model.info()["low_res_size"])
        mask = None
        if body.mask_input is not None:
            try:
                raw = base64.b64decode(body.mask_input, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPException(422, "mask_input must be base64 (float32 little-endian)") from None
            if len(raw) != 4 * s * s:
                raise HTTPException(
                    422,
                    f"mask_input must be {s}x{s} float32 values ({4 * s * s} bytes), got {len(raw)} bytes",
                )
            mask = np.frombuffer(raw, dtype="<f4").reshape(1, s, s)
        coords = labels = None
        if body.points:
            coords = np.array([[p.x, p.y] for p in body.points], dtype=np.float64)
            labels = np.array([p.label for p in body.points], dtype=np.int64)
        box = None if body.box is None else np.array(body.box, dtype=np.float64)
        try:
            low, scores = model.decode(img.sha256, lambda: load_rgb(img), (img.height, img.width),
                                       point_coords=coords, point_labels=labels, box=box, mask_input=mask,
                                       multimask_output=body.multimask_output)  # fmt: skip
        except PromptError as err:
            raise HTTPException(422, str(err)) from None
        return DecodeOut(
            scores=[float(v) for v in scores],
            shape=list(low.shape),
            low_res_logits=base64.b64encode(low.astype("<f4").tobytes()).decode("ascii"),
        )

    # ---- annotations --------------------------------------------------------------------------------------

    @app.get("/api/images/{image_id}/annotations")
    def list_annotations(image_id: DbId, who: Who) -> list[AnnotationOut]:
        img = store.image_for(engine, who, image_id)
        return [_annotation_out(a, c, img) for a, c in store.annotations_of(engine, image_id)]

    @app.post("/api/images/{image_id}/annotations", status_code=201)
    def create_annotation(image_id: DbId, body: AnnotationIn, who: Who, response: Response) -> AnnotationOut:
        img = store.image_for(engine, who, image_id)
        if list(body.rle.size) != [img.height, img.width]:
            raise HTTPException(422, f"rle.size must be [{img.height}, {img.width}] for this image")
        try:
            counts, area, bbox = store.compress_rle(body.rle.counts, img.height, img.width)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        fields = {
            "label": body.label, "rle_counts": counts, "area": area, "bbox": json.dumps(bbox),
            "source": body.source, "seconds": body.seconds, "quality": body.quality,
            "predicted_iou": body.predicted_iou, "prompts": json.dumps([p.model_dump() for p in body.prompts]),
            "idempotency_key": body.idempotency_key,
        }  # fmt: skip
        ann_id, created = store.create_annotation(engine, img, who.user_id, fields)
        if not created:
            response.status_code = 200
        a, creator = store.annotation_for(engine, who, ann_id)
        return _annotation_out(a, creator, img)

    @app.get("/api/annotations/{annotation_id}")
    def get_annotation(annotation_id: DbId, who: Who) -> AnnotationOut:
        a, creator = store.annotation_for(engine, who, annotation_id)
        return _annotation_out(a, creator, store.image_for(engine, who, a.image_id))

    @app.patch("/api/annotations/{annotation_id}")
    def update_annotation(annotation_id: DbId, body: AnnotationUpdate, who: Who) -> AnnotationOut:
        a, _ = store.annotation_for(engine, who, annotation_id)
        img = store.image_for(engine, who, a.image_id)
        changes: dict[str, Any] = {k: getattr(body, k) for k in ("label", "quality", "seconds", "deleted")
                                   if k in body.model_fields_set}  # fmt: skip
        if "label" in changes and changes["label"] is None:
            raise HTTPException(422, "label cannot be null")
        if body.rle is not None:
            if list(body.rle.size) != [img.height, img.width]:
                raise HTTPException(422, f"rle.size must be [{img.height}, {img.width}] for this image")
            try:
                counts, area, bbox = store.compress_rle(body.rle.counts, img.height, img.width)
            except ValueError as err:
                raise HTTPException(422, str(err)) from None
            changes.update(rle_counts=counts, area=area, bbox=json.dumps(bbox))
        store.update_annotation(engine, who, annotation_id, body.version, changes)
        a, creator = store.annotation_for(engine, who, annotation_id)
        return _annotation_out(a, creator, img)

    @app.delete("/api/annotations/{annotation_id}")
    def delete_annotation(
        annotation_id: DbId, version: Annotated[int, Query(ge=1, le=MAX_DB_INT)], who: Who
    ) -> AnnotationOut:
        a, _ = store.annotation_for(engine, who, annotation_id)
        img = store.image_for(engine, who, a.image_id)
        store.update_annotation(engine, who, annotation_id, version, {"deleted": True})
        a, creator = store.annotation_for(engine, who, annotation_id)
        return _annotation_out(a, creator, img)

    @app.post("/api/images/{image_id}/prefill")
    def prefill(image_id: DbId, who: Who) -> PrefillOut:
        """Stage 2: add the automatic generator's confident masks once per image (a repeat adds nothing)."""
        img = store.image_for(engine, who, image_id)
        created, seconds = 0, 0.0
        if not store.prefill_done(engine, image_id):

            def progress(done: int, total: int) -> None:
                with prefills_lock:
                    prefills[image_id] = (done, total)

            try:
                masks, seconds = model.prefill(
                    img.sha256,
                    lambda: load_rgb(img),
                    settings.prefill_points_per_side,
                    settings.prefill_iou_thresh,
                    settings.prefill_stability_thresh,
                    progress=progress,
                )  # fmt: skip
            finally:
                with prefills_lock:
                    prefills.pop(image_id, None)
            rows = []
            for m in masks:
                seg = m["segmentation"]
                counts = seg["counts"] if isinstance(seg["counts"], str) else seg["counts"].decode("ascii")
                rows.append({
                    "rle_counts": counts, "area": int(m["area"]), "bbox": json.dumps([float(v) for v in m["bbox"]]),
                    "predicted_iou": float(m["predicted_iou"]), "stability_score": float(m["stability_score"]),
                    "prompts": json.dumps([{"x": float(x), "y": float(y), "label": 1} for x, y in m["point_coords"]]),
                })  # fmt: skip
            created = store.save_prefill(engine, image_id, model.key, rows, seconds)
        anns = [_annotation_out(a, c, img) for a, c in store.annotations_of(engine, image_id)]
        return PrefillOut(created=created, seconds=seconds, annotations=anns)

    @app.get("/api/images/{image_id}/prefill/progress")
    def prefill_progress(image_id: DbId, who: Who) -> PrefillProgress:
        """How far a running pre-fill of this image is (the page polls this while its POST runs)."""
        store.image_for(engine, who, image_id)
        with prefills_lock:
            running = prefills.get(image_id)
        if running is None:
            return PrefillProgress(running=False, done=0, total=0)
        return PrefillProgress(running=True, done=running[0], total=running[1])

    # ---- export and model -----------------------------------------------------------------------------------

    @app.get("/api/projects/{project_id}/export")
    def export(project_id: DbId, who: Who, format: Literal["coco", "sa1b"] = "coco") -> JSONResponse:
        project = store.project_for(engine, who, project_id)
        images, anns = store.project_dump(engine, project_id)
        body = exports.to_coco(images, anns) if format == "coco" else exports.to_sa1b(images, anns)
        return JSONResponse(
            body,
            headers={"Content-Disposition": f'attachment; filename="project-{project.id}-{format}.json"'},
        )

    @app.get("/api/model")
    def model_info(_who: Who) -> ModelInfo:
        info = model.info()
        browser = info["decode"] == "browser"
        return ModelInfo(
            **info,
            decoder_url="/api/model/decoder.onnx" if browser else None,
            decoder_optimized=browser,  # `ModelService.decoder_path` exports with `optimize_for_page`
        )

    def browser_decoder() -> None:
        if model.decodes_on_server():
            raise HTTPException(
                404,
                "this model's clicks are decoded on the server (POST /api/images/{id}/decode): no browser decoder",
            )

    @app.get("/api/model/decoder.onnx", response_class=FileResponse)
    def decoder(_who: Who) -> FileResponse:
        browser_decoder()
        return FileResponse(model.decoder_path(), media_type="application/octet-stream",
                            headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip

    @app.get("/api/model/decoder.{part}.onnx", response_class=FileResponse)
    def decoder_part(part: str, _who: Who) -> FileResponse:
        """The decoder's other graphs: ``image`` (once per image, before the per-click graph) and ``upscale``
        (the low-res rows under the resize padding, after a click's mask is shown)."""
        from segany.onnx_export import PAGE_PARTS, page_graph_path

        if part not in PAGE_PARTS:
            raise HTTPException(404, "no such decoder graph")
        browser_decoder()
        return FileResponse(page_graph_path(model.decoder_path(), part), media_type="application/octet-stream",
                            headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip

    return app
