"""`segany annotate IMAGE_DIR`: start the annotation server (data engine stages 1-2) on a folder of images."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HELP = """Serve a browser annotation tool for the images in IMAGE_DIR: click foreground/background points or drag a
box and the mask appears (SAM's and MobileSAM's decoder runs in the browser; HQ-SAM and SAM 2 clicks are decoded
by the server), accept, rate 1-10, move on; export COCO or SA-1B JSON from the page or from
/api/projects/ID/export.

Log in as the admin user (--admin-user) with the password in the SEGANY_ADMIN_PASSWORD environment variable
(at least 12 characters; there is no default). For a quick local session use --dev: it binds 127.0.0.1 only
and prints a random password for this run."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("annotate", help="start the annotation server on a folder of images",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="folder of images (scanned recursively)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="database URL: sqlite:///path.db (default: DATA_DIR/annotations.db) or postgresql://...")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the database, uploads and embedding cache live (default: IMAGE_DIR/.segany)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--model",
        default="default",
        help="model kind: default, vit_b, vit_l, vit_h, vit_t (MobileSAM), tiny (decoded in the browser); "
        "hq_vit_b/l/h/tiny (HQ-SAM), sam2.1_hiera_* / sam2_hiera_* (SAM 2) (clicks decoded by the server)",
    )
    p.add_argument("--checkpoint", default=None, help="weights for --model (.safetensors or .pth)")
    p.add_argument("--quantize", action="store_true", help="serve the int8 decoder (smaller, faster in wasm)")
    p.add_argument("--admin-user", default="admin")
    p.add_argument("--project", default=None, help="project name (default: the folder's name)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="upload size cap in MiB")
    p.add_argument("--max-megapixels", type=float, default=50.0, help="upload pixel cap")
    p.add_argument("--prefetch", type=int, default=3, metavar="N",
                   help="compute the embeddings of the next N images in the background (default 3; 0: off)")  # fmt: skip
    p.add_argument("--dev", action="store_true",
                   help="local-only dev mode: 127.0.0.1 only; random admin password if none is set")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from segany.cli.extras import require

    require("annotate", "engine")
    import uvicorn

    from segany.build import check_kind
    from segany.engine import ConfigError, EngineSettings, create_app
    from segany.engine.app import check_web_assets, prefetch_order
    from segany.engine.model import ModelSpec, ModelUnavailable
    from segany.engine.settings import PASSWORD_ENV

    try:
        check_kind(args.model)
    except ValueError as err:
        print(f"error: --model: {err}")
        return 2
    image_dir = args.image_dir
    if not image_dir.is_dir():
        print(f"error: {image_dir} is not a folder")
        return 2
    data_dir = args.data_dir or image_dir / ".segany"
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = EngineSettings(
        image_dir=image_dir,
        data_dir=data_dir,
        db_url=args.db or f"sqlite:///{(data_dir / 'annotations.db').resolve()}",
        admin_password=os.environ.get(PASSWORD_ENV) or None,
        admin_user=args.admin_user,
        host=args.host,
        dev_mode=args.dev,
        model=ModelSpec(kind=args.model, checkpoint=args.checkpoint, quantize_decoder=args.quantize),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        project_name=args.project,
        prefetch_ahead=args.prefetch,
    )
    try:
        settings.check()
        check_web_assets()  # a page whose runtime 404s would fail silently in the browser
        app = create_app(settings)
    except ConfigError as err:
        print(f"error: {err}")
        return 2
    model = app.state.model

    # Ready when the image is: the model is built and its browser decoder exported (cached on disk under the
    # weights' hash) before the server listens, so no page or embedding request waits for them (HQ-SAM and SAM 2
    # have no browser decoder: the server decodes their clicks).
    t0 = time.perf_counter()
    print("preparing the model (the decoder export is cached after the first start)…", flush=True)
    try:
        model.warm_up()
        print(f"model {model.key} ready in {time.perf_counter() - t0:.1f} s", flush=True)
        # The first images the page will open, in its order, computed in the background.
        model.prefetch(prefetch_order(app.state.engine, settings, app.state.project_id, after=None))
    except ModelUnavailable as err:
        print(f"warning: {err}; pages will show the error until this is fixed", flush=True)
    print(f"segany annotate: http://{args.host}:{args.port}/  (user {settings.admin_user!r})", flush=True)
    if settings.generated_password:
        print(f"dev mode: this run's admin password is {settings.admin_password}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5)
    return 0
