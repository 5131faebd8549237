"""The server's one model: image embeddings (computed once per image, cached on disk), the browser decoder, the
server-side decoder and stage-2 pre-fill masks.

SAM and MobileSAM clicks are decoded in the browser (the exported decoder on the stride-16 embedding). HQ-SAM
(whose HQ token reads the encoder's early features) and SAM 2 (whose decoder reads the stride-4/8 features and
whose geometry differs) are decoded here (`ModelService.decode`): `SamPredictor` on the image's cached features,
one predictor per recently clicked image.

The model is an operator setting (``--model``/``--checkpoint``); nothing a client sends selects or loads a model
file. Building the app imports no torch; `segany annotate` calls `ModelService.warm_up` (torch, the model, the
decoder export, cached on disk) before it listens, so the first page never waits for them.

Embeddings the annotator will need next are computed in the background (`ModelService.prefetch`): one at a time,
at the lowest CPU priority, after a quiet moment (no request for `PREFETCH_QUIET_S`) and once the page that asked
for an embedding is ready to click (`page_ready`, at most `PAGE_OPEN_HOLD_S` later), giving way to on-demand
requests (a prefetch for another image stops at its next encoder layer) and computed twice only when that is
faster: an on-demand request for the image being prefetched waits for it, unless the prefetch is starved of CPU by
other work (at nice 19 it can crawl on a busy machine), in which case it stops and the request computes the image
at normal priority.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("segany.engine")


PREFETCH_QUIET_S = 0.3  # a background embedding starts only after this long without a request
# An embedding served to a page holds the prefetcher until the page says it is ready to click
# (`ModelService.page_ready`), at most this long: the page's decoder load and warm-up are its heaviest CPU
# moment, and on 2 cores a background encoder beside them slows the first page even at nice 19.
PAGE_OPEN_HOLD_S = 3.0
# A prefetch is starved when finishing it is slower than starting again at normal priority: with f of its
# encoder done and a share s of a core since it started, the rest takes wall * (1 - f) / f, a recompute about
# cpu / f (at a full core), so it gives way when s < PREFETCH_STARVED_MARGIN * (1 - f) (the margin covers the
# recompute's image load and its not getting a full core either), after at least `PREFETCH_STARVED_AFTER_S`.
PREFETCH_STARVED_MARGIN = 0.8
PREFETCH_STARVED_AFTER_S = 0.1
PREDICTOR_CACHE = 4  # server-side decoding: the predictors of the last few clicked images stay in memory


class ModelUnavailable(RuntimeError):
    """The configured model cannot be built (missing or invalid weights); the API answers 503."""


class _Cancelled(Exception):
    """A background prefetch gave way: an on-demand request for another image (or for its own, when starved), or
    it left the queue."""


class _CpuShare:
    """Whether a prefetch is starved of CPU: its thread's share of a core (thread CPU time / wall time) since its
    first call, against its progress (calls / ``steps``, one call per encoder module entered).

    Called from the prefetch's encoder hooks (in the prefetch thread), so the clock starts with the encoder, not
    while the image loads. A nice-19 thread on a busy machine gets a small share (the others' work goes first)."""

    def __init__(self, steps: int) -> None:
        self.steps = max(1, steps)
        self.calls = 0
        self.start: tuple[float, float] | None = None

    def starved(self) -> bool:
        now = (time.monotonic(), time.thread_time())
        if self.start is None:
            self.start = now
            return False
        self.calls += 1
        wall = now[0] - self.start[0]
        if wall < PREFETCH_STARVED_AFTER_S:
            return False
        done = min(1.0, self.calls / self.steps)
        return (now[1] - self.start[1]) < PREFETCH_STARVED_MARGIN * (1.0 - done) * wall


def _lowest_priority() -> None:
    """Nice 19 for the calling thread (Linux: per thread; threads it starts, e.g. torch's pool, inherit it)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


# What a cached browser decoder depends on besides the weights: the exporter and the modules it traces.
_EXPORT_SOURCES = (
    "segany.onnx_export",
    "segany.modeling.prompt_encoder",
    "segany.modeling.mask_decoder",
    "segany.modeling.transformer",
    "segany.modeling.common",
)


def decoder_export_tag() -> str:
    """Names the exporter that made a cached decoder: a hash of segany's version, the torch and onnx versions that
    traced it, the onnxruntime version that optimised it, and the source of the exporter and of every module it
    traces (`_EXPORT_SOURCES`).

    The cache folder is already keyed by the weights' hash; this tag makes any change to what the graph is built
    from (an upgrade, a patched module) write a new file instead of serving an export made by the old code.
    """
    import segany

    h = hashlib.sha256(segany.__version__.encode())
    for dist in ("torch", "onnx", "onnxruntime"):  # onnxruntime optimises the page's graphs
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            h.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    for name in _EXPORT_SOURCES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            h.update(name.encode())
            h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "default"
    checkpoint: str | None = None
    quantize_decoder: bool = False
    seed: int = 0  # fixes random weights when there is no checkpoint, so cached embeddings stay valid

    @property
    def weights_file(self) -> Path | None:
        """The file the weights come from: the checkpoint, or the shipped default weights; None for random ones."""
        if self.checkpoint is not None:
            return Path(self.checkpoint)
        if self.kind == "default":
            from segany.build import DEFAULT_WEIGHTS

            return DEFAULT_WEIGHTS
        return None

    @property
    def key(self) -> str:
        """Names the cache entries: other weights must never reuse another model's embeddings or decoder.

        The SHA-256 of the weights file (for ``default`` without a checkpoint, of the shipped weights, which a new
        segany release replaces). Random weights (no file) are named by their seed here; `ModelService.key` adds
        the hash of the weights that seed built.
        """
        path = self.weights_file
        if path is None:
            return f"{self.kind}-init{self.seed}"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"{self.kind}-{h.hexdigest()[:16]}"


def decodes_on_server(sam: Any) -> bool:
    """Whether the page cannot decode this model's clicks itself: HQ-SAM (its HQ token reads the encoder's early
    features) and SAM 2 (its decoder reads the stride-4/8 features; the image is stretched to a square). The
    page's decoder is SAM's graph on the stride-16 embedding alone."""
    return bool(getattr(sam, "is_hq", False)) or getattr(sam, "resize_mode", "longest_side") != "longest_side"


class _LowResOnly:
    """The model as the server's decode predictors see it: every attribute the model's, but `postprocess_masks`
    returns the low-res logits unchanged. The page upsamples the logits itself, so the predictor's masks at the
    image's size (most of a click's time on a 12 MP photo) would be thrown away; its logits and scores are the
    model's own."""

    def __init__(self, sam: Any) -> None:
        self._sam = sam

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sam, name)

    def postprocess_masks(self, masks: Any, input_size: Any, original_size: Any) -> Any:
        return masks


@dataclass
class _CachedPredictor:
    predictor: Any  # segany.predictor.SamPredictor, its features set from the embedding cache
    lock: threading.Lock


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ModelService:
    """Lazily built SAM plus on-disk caches under ``cache_dir/<model key>/``."""

    def __init__(self, spec: ModelSpec, cache_dir: Path) -> None:
        self.spec = spec
        self.cache_dir = Path(cache_dir)
        self._key: str | None = None
        self._sam: Any = None
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()  # one heavy torch job at a time: the machine has few cores
        self._item_locks: dict[str, threading.Lock] = {}
        # Background prefetch (see `prefetch`); `_cond` guards the fields below.
        self._cond = threading.Condition()
        self._queue: list[
            tuple[str, Callable[[], Any]]
        ] = []  # pending, in the order the annotator meets them
        self._demanded: Counter[str] = (
            Counter()
        )  # images whose on-demand embedding request is waiting or running
        self._prefetching: str | None = None
        self._stop_current = False
        self._worker: threading.Thread | None = None
        self._closed = False
        self.prefetched: list[str] = []  # images the prefetcher computed (for tests and benchmarks)
        self.gave_way_starved: list[str] = []  # prefetches a request for the same image took over (starved)
        self._last_request = 0.0
        self._hold_until = 0.0  # see `hold_prefetch`
        # Server-side decoding: image sha256 -> predictor, least recently used first; `_predictors_lock` guards it.
        self._predictors: OrderedDict[str, _CachedPredictor] = OrderedDict()
        self._predictors_lock = threading.Lock()
        self._hashes: tuple[str, str] | None = None  # the model's (encoder_sha256, model_fingerprint), once

    @property
    def key(self) -> str:
        """`ModelSpec.key`, plus the weights' own hash for random weights (the cache folder's name)."""
        if self._key is None:
            try:
                key = self.spec.key
            except OSError as err:
                raise ModelUnavailable(f"model weights cannot be read: {err}") from err
            if self.spec.weights_file is None:
                from segany.batch import weights_sha256

                key = f"{key}-{weights_sha256(self.sam())[:16]}"
            self._key = key
        return self._key

    def _dir(self, sub: str) -> Path:
        d = self.cache_dir / self.key / sub
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _item_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._item_locks.setdefault(name, threading.Lock())

    def sam(self) -> Any:
        with self._lock:
            if self._sam is None:
                import torch

                from segany.build import check_kind, sam_model_registry

                try:
                    check_kind(self.spec.kind)
                except ValueError as err:
                    raise ModelUnavailable(str(err)) from err
                torch.manual_seed(self.spec.seed)
                try:
                    self._sam = sam_model_registry[self.spec.kind](checkpoint=self.spec.checkpoint).eval()
                except (FileNotFoundError, ValueError) as err:  # includes segany.checkpoint.CheckpointError
                    raise ModelUnavailable(f"model {self.spec.kind!r} cannot be loaded: {err}") from err
            return self._sam

    def warm_up(self) -> None:
        """Hash the weights, build the model and export the decoder (if not cached) now.

        `segany annotate` runs this before it listens, so no request waits for it; the export is cached on disk
        under the weights' hash and the exporter's tag (`decoder_export_tag`), so later starts skip it. HQ-SAM and
        SAM 2 have no browser decoder: their encoder hash (for the decode predictors) is computed instead.
        """
        self.info()
        if self.decodes_on_server():  # HQ-SAM and SAM 2: no browser decoder; the predictors' hashes, once
            self._new_predictor()
        else:
            self.decoder_path()

    def decodes_on_server(self) -> bool:
        """HQ-SAM and SAM 2: the page sends its clicks to `decode` (see `decodes_on_server`)."""
        return decodes_on_server(self.sam())

    def info(self) -> dict[str, Any]:
        sam = self.sam()
        pe = sam.prompt_encoder
        return {
            "model_key": self.key,
            "image_size": int(pe.input_image_size[0]),
            "embedding_shape": [1, int(pe.embed_dim), *map(int, pe.image_embedding_size)],
            "quantized_decoder": self.spec.quantize_decoder,
            "decode": "server" if decodes_on_server(sam) else "browser",
            "resize_mode": getattr(sam, "resize_mode", "longest_side"),
            "low_res_size": int(pe.mask_input_size[0]),
        }

    def decoder_path(self) -> Path:
        """The exported browser decoder, written once per model key."""
        tag = decoder_export_tag()
        name = f"decoder-{tag}.int8.onnx" if self.spec.quantize_decoder else f"decoder-{tag}.onnx"
        path = self._dir("onnx") / name
        with self._item_lock("decoder"):
            if not path.exists():
                from segany.onnx_export import export_page_decoder

                with self._compute_lock:  # the page's per-click graph here, its per-image graph next to it
                    export_page_decoder(self.sam(), path, quantize=self.spec.quantize_decoder)
        return path

    def embedding_path(self, image_sha: str) -> Path:
        return self._dir("embeddings") / f"{image_sha}.npy"

    def features_path(self, image_sha: str) -> Path:
        """Server-decoded models: all the encoder's outputs (`segany.predictor.ImageEmbedding`, safetensors)."""
        return self._dir("embeddings") / f"{image_sha}.safetensors"

    def _cached(self, image_sha: str) -> bool:
        if not self.embedding_path(image_sha).exists():
            return False
        return not self.decodes_on_server() or self.features_path(image_sha).exists()

    @contextlib.contextmanager
    def _on_demand(self, image_sha: str) -> Iterator[None]:
        """A request waits on this image: the prefetcher drops it from its queue, and one computing another
        image gives way (see `_should_stop`)."""
        with self._cond:
            self._demanded[image_sha] += 1
            self._queue = [q for q in self._queue if q[0] != image_sha]
        try:
            yield
        finally:
            with self._cond:
                self._demanded[image_sha] -= 1
                if self._demanded[image_sha] <= 0:
                    del self._demanded[image_sha]
                self._cond.notify_all()

    def embedding(self, image_sha: str, load_rgb: Callable[[], Any]) -> bytes:
        """Float32 embedding bytes (C order, shape ``info()['embedding_shape']``) of one image.

        ``load_rgb`` is called only on a cache miss; concurrent requests for the same image compute it once, and
        a request for an image the prefetcher is computing waits for that instead of starting again, unless the
        prefetch is starved of CPU (see `_CpuShare`): then it stops at its next encoder layer and this computes.
        """
        path = self.ensure_embedding(image_sha, load_rgb)
        arr = np.load(path, allow_pickle=False)
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()

    def ensure_embedding(self, image_sha: str, load_rgb: Callable[[], Any]) -> Path:
        """Compute and cache one image's embedding (and the server decoder's features) unless cached; its path.
        What `embedding` does without reading the file: pages that decode on the server need only this."""
        path = self.embedding_path(image_sha)
        if not self._cached(image_sha):
            with self._on_demand(image_sha):
                self._compute_embedding(image_sha, load_rgb, path, cancel=None)
        return path

    def _compute_embedding(
        self, image_sha: str, load_rgb: Callable[[], Any], path: Path, cancel: Callable[[], bool] | None
    ) -> bool:
        """Write ``path`` unless it exists; False if it did. ``cancel`` (prefetch only) can stop the encoder."""
        with self._item_lock(f"emb:{image_sha}"):
            if self._cached(image_sha):
                return False
            import torch

            rgb = load_rgb()
            with self._compute_lock, torch.inference_mode(), self._cancel_hooks(cancel):
                predictor = self._new_predictor()
                predictor.set_image(rgb)
                emb = predictor.get_image_embedding().cpu().numpy().astype(np.float32)
                full = predictor.get_embedding() if self.decodes_on_server() else None
            if full is not None:  # the early (HQ-SAM) or high-resolution (SAM 2) features too
                full.save(self.features_path(image_sha))
            buf = io.BytesIO()
            np.save(buf, emb, allow_pickle=False)
            _atomic_write(path, buf.getvalue())
        return True

    def _model_hashes(self) -> tuple[str, str]:
        """The model's (`encoder_sha256`, `model_fingerprint`), computed once."""
        from segany.predictor import encoder_sha256, model_fingerprint

        sam = self.sam()
        with self._lock:
            if self._hashes is None:
                self._hashes = (encoder_sha256(sam), model_fingerprint(sam))
            return self._hashes

    def _new_predictor(self, low_res_only: bool = False) -> Any:
        """A `SamPredictor` of the model, given the model's hashes computed once (not once per predictor);
        ``low_res_only``: its masks are not upsampled to the image's size (`_LowResOnly`)."""
        from segany.predictor import SamPredictor

        sam = self.sam()
        sha, fingerprint = self._model_hashes()
        model: Any = _LowResOnly(sam) if low_res_only else sam
        predictor = SamPredictor(model)
        predictor._weights_sha256, predictor._fingerprint = sha, fingerprint
        return predictor

    # ---- server-side decoding (HQ-SAM, SAM 2) -------------------------------------------------------------

    def decode(
        self,
        image_sha: str,
        load_rgb: Callable[[], Any],
        size: tuple[int, int],
        *,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prompt (image pixels) through `SamPredictor.predict` on this image's cached features: its
        low-res logits C×s×s (float32) and scores C, as the predictor returns them.

        The embedding is computed (and cached) first if needed; the predictors of the last `PREDICTOR_CACHE`
        images stay in memory. ``size`` is the image's (height, width). Bad prompts raise
        `segany.predictor.PromptError`.
        """
        import torch

        if not self._cached(image_sha):
            # as the embedding route: a background prefetch of another image gives way
            with self._on_demand(image_sha):
                self._compute_embedding(image_sha, load_rgb, self.embedding_path(image_sha), cancel=None)
        # A click on a cached image runs beside a background prefetch (at nice 19) instead of stopping it.
        entry = self._predictor_for(image_sha, size)
        with entry.lock, torch.inference_mode():
            _, scores, low = entry.predictor.predict(
                point_coords, point_labels, box, mask_input, multimask_output=multimask_output
            )
        return np.ascontiguousarray(low, dtype=np.float32), np.asarray(scores, dtype=np.float32)

    def _predictor_for(self, image_sha: str, size: tuple[int, int]) -> _CachedPredictor:
        with self._predictors_lock:
            entry = self._predictors.get(image_sha)
            if entry is not None:
                self._keep_predictor(image_sha, entry)
                return entry
        with self._item_lock(f"pred:{image_sha}"):
            with self._predictors_lock:  # another request may have set it meanwhile
                entry = self._predictors.get(image_sha)
            if entry is None:
                predictor = self._new_predictor(low_res_only=True)
                predictor.set_embedding(self._load_embedding(image_sha, size, predictor))
                entry = _CachedPredictor(predictor, threading.Lock())
            with self._predictors_lock:
                self._keep_predictor(image_sha, entry)
        return entry

    def _keep_predictor(self, image_sha: str, entry: _CachedPredictor) -> None:
        """Most recently used last; the oldest beyond `PREDICTOR_CACHE` leave (caller holds the lock)."""
        self._predictors[image_sha] = entry
        self._predictors.move_to_end(image_sha)
        while len(self._predictors) > PREDICTOR_CACHE:
            self._predictors.popitem(last=False)

    def _load_embedding(self, image_sha: str, size: tuple[int, int], predictor: Any) -> Any:
        import torch

        from segany.predictor import ImageEmbedding

        if self.decodes_on_server():
            return ImageEmbedding.load(self.features_path(image_sha))
        # SAM / MobileSAM: the stride-16 embedding is all the decoder reads
        features = torch.from_numpy(np.load(self.embedding_path(image_sha), allow_pickle=False))
        h, w = size
        input_size = predictor.transform.get_preprocess_shape(h, w, predictor.transform.target_length)
        return ImageEmbedding(
            features,
            (h, w),
            (int(input_size[0]), int(input_size[1])),
            predictor.fingerprint,
            model_sha256=predictor.weights_sha256,
        )

    @contextlib.contextmanager
    def _cancel_hooks(self, cancel: Callable[[], bool] | None) -> Iterator[None]:
        """While a prefetch holds the compute lock: every encoder module first checks ``cancel``."""
        if cancel is None:
            yield
            return
        if cancel():
            raise _Cancelled

        def check(_module: Any, _args: Any) -> None:
            if cancel():
                raise _Cancelled

        handles = [m.register_forward_pre_hook(check) for m in self.sam().image_encoder.modules()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ---- background prefetch ------------------------------------------------------------------------------

    def prefetch(self, items: Sequence[tuple[str, Callable[[], Any]]]) -> None:
        """Compute these images' embeddings in the background, in this order (``(sha256, load_rgb)`` pairs).

        Replaces the previous queue: pending images not listed are dropped, and one being computed that is not
        listed stops at its next encoder layer. Cached images are skipped; on-demand requests always go first.
        """
        with self._cond:
            if self._closed:
                return
            shas = [sha for sha, _ in items]
            if self._prefetching is not None and self._prefetching not in shas:
                self._stop_current = True
            self._queue = [
                (sha, f) for sha, f in items if sha not in self._demanded and sha != self._prefetching
            ]
            self._cond.notify_all()
            if self._worker is None and self._queue:
                self._worker = threading.Thread(
                    target=self._prefetch_loop, name="segany-prefetch", daemon=True
                )
                self._worker.start()

    def prefetch_idle(self, timeout: float) -> bool:
        """Wait until the prefetch queue is empty and nothing is being prefetched (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._prefetching is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop the prefetcher (the one running stops at its next encoder layer)."""
        with self._cond:
            self._closed = True
            self._queue = []
            self._cond.notify_all()

    def _should_stop(self, sha: str, share: _CpuShare) -> bool:
        with self._cond:
            if self._closed or self._stop_current or any(s != sha for s in self._demanded):
                return True
            demanded = sha in self._demanded
        # A request waits for this very image: finishing is faster than starting again, unless starved.
        starved = share.starved()
        if demanded and starved:
            log.info("prefetch of %s is starved of CPU: the request for it computes it instead", sha[:12])
            self.gave_way_starved.append(sha)
        return demanded and starved

    def touch(self) -> None:
        """A request was served: the prefetcher waits until the server has been quiet for `PREFETCH_QUIET_S`
        (a page loading its image, masks and decoder is not slowed by a background embedding)."""
        self._last_request = time.monotonic()

    def hold_prefetch(self) -> None:
        """A page is opening an image: no background embedding starts for `PAGE_OPEN_HOLD_S` or until
        `page_ready`."""
        with self._cond:
            self._hold_until = max(self._hold_until, time.monotonic() + PAGE_OPEN_HOLD_S)

    def page_ready(self) -> None:
        """The page can be clicked: the prefetcher may start (after the usual quiet moment)."""
        with self._cond:
            self._hold_until = 0.0
            self._cond.notify_all()

    def _prefetch_loop(self) -> None:
        _lowest_priority()
        while True:
            with self._cond:
                while not self._closed:
                    if not self._queue or self._demanded:
                        self._cond.wait()
                        continue
                    quiet = max(self._last_request + PREFETCH_QUIET_S, self._hold_until) - time.monotonic()
                    if quiet <= 0:
                        break
                    self._cond.wait(quiet)
                if self._closed:
                    return
                sha, load_rgb = self._queue.pop(0)
                self._prefetching, self._stop_current = sha, False
            try:
                steps = sum(1 for _ in self.sam().image_encoder.modules())  # one hook call each
                stop = functools.partial(self._should_stop, sha, _CpuShare(steps))
                if self._compute_embedding(sha, load_rgb, self.embedding_path(sha), stop):
                    self.prefetched.append(sha)
            except _Cancelled:
                log.debug("prefetch of %s gave way", sha)
                with self._cond:  # to an on-demand request: still wanted, so it runs again first, after it
                    wanted = not (self._closed or self._stop_current or sha in self._demanded)
                    if wanted and all(q[0] != sha for q in self._queue):
                        self._queue.insert(0, (sha, load_rgb))
            except Exception as err:  # noqa: BLE001 - a failed prefetch must not stop the next ones
                log.warning("prefetching embedding %s failed: %s", sha[:12], err)
            finally:
                with self._cond:
                    self._prefetching = None
                    self._cond.notify_all()

    def prefill(
        self,
        image_sha: str,
        load_rgb: Callable[[], Any],
        points_per_side: int,
        pred_iou_thresh: float | None,
        stability_thresh: float | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[dict], float]:
        """Stage 2: the masks the automatic generator is confident about, as COCO RLE, and the seconds it took.

        The image's cached embedding is used (computed and cached first if missing, as the page's own request
        would), so a pre-fill never runs the encoder on an image the page has already embedded, and the page's
        next request for it finds it cached. The pre-fill is an on-demand request throughout: a background
        prefetch of another image (at nice 19, holding the compute lock) gives way at its next encoder layer and
        no new one starts until it is done. ``progress(done, total)`` is called as the grid's points are decoded
        (``done`` = 0 while the image is encoded); it counts the points that went through the decoder's IoU head.
        """
        import torch

        from segany.automatic import SamAutomaticMaskGenerator

        total = points_per_side * points_per_side
        if progress is not None:
            progress(0, total)
        t0 = time.perf_counter()
        with self._on_demand(image_sha):
            self._compute_embedding(image_sha, load_rgb, self.embedding_path(image_sha), cancel=None)
            rgb = load_rgb()
            with self._compute_lock, torch.inference_mode():
                sam = self.sam()
                gen = SamAutomaticMaskGenerator(
                    sam,
                    points_per_side=points_per_side,
                    pred_iou_thresh=pred_iou_thresh,
                    stability_score_thresh=stability_thresh,
                    output_mode="coco_rle",
                )
                # the model's hashes (the embedding's check), computed once per server, not once per pre-fill
                gen.predictor._weights_sha256, gen.predictor._fingerprint = self._model_hashes()
                embedding = self._load_embedding(image_sha, rgb.shape[:2], gen.predictor)
                done = [0]

                def count(_module: Any, args: Any) -> None:
                    if progress is not None and args and hasattr(args[0], "shape"):
                        done[0] = min(total, done[0] + int(args[0].shape[0]))
                        progress(done[0], total)

                head = getattr(getattr(sam, "mask_decoder", None), "iou_prediction_head", None)
                handle = head.register_forward_pre_hook(count) if head is not None and progress else None
                try:
                    masks = gen.generate(rgb, embedding=embedding)
                finally:
                    if handle is not None:
                        handle.remove()
                seconds = time.perf_counter() - t0
        if progress is not None:
            progress(total, total)
        return masks, seconds
