"""The server's one model: image embeddings (computed once per image, cached on disk), the browser decoder and
stage-2 pre-fill masks.

The model is an operator setting (``--model``/``--checkpoint``); nothing a client sends selects or loads a model
file. Torch is imported only when the first embedding, decoder or pre-fill is asked for, so the server starts
(and restarts after a crash) in about a second.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class ModelUnavailable(RuntimeError):
    """The configured model cannot be built (missing or invalid weights); the API answers 503."""


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
        """Build the model and export the decoder now (the CLI runs this in the background at start)."""
        self.decoder_path()

    def info(self) -> dict[str, Any]:
        pe = self.sam().prompt_encoder
        return {
            "model_key": self.key,
            "image_size": int(pe.input_image_size[0]),
            "embedding_shape": [1, int(pe.embed_dim), *map(int, pe.image_embedding_size)],
            "quantized_decoder": self.spec.quantize_decoder,
        }

    def decoder_path(self) -> Path:
        """The exported browser decoder, written once per model key."""
        name = "decoder.int8.onnx" if self.spec.quantize_decoder else "decoder.onnx"
        path = self._dir("onnx") / name
        with self._item_lock("decoder"):
            if not path.exists():
                from segany.onnx_export import export_decoder

                with self._compute_lock:
                    export_decoder(self.sam(), path, quantize=self.spec.quantize_decoder)
        return path

    def embedding(self, image_sha: str, load_rgb: Any) -> bytes:
        """Float32 embedding bytes (C order, shape ``info()['embedding_shape']``) of one image.

        ``load_rgb`` is called only on a cache miss; concurrent requests for the same image compute it once.
        """
        path = self._dir("embeddings") / f"{image_sha}.npy"
        with self._item_lock(f"emb:{image_sha}"):
            if not path.exists():
                import torch

                from segany.predictor import SamPredictor

                rgb = load_rgb()
                with self._compute_lock, torch.inference_mode():
                    predictor = SamPredictor(self.sam())
                    predictor.set_image(rgb)
                    emb = predictor.get_image_embedding().cpu().numpy().astype(np.float32)
                buf = io.BytesIO()
                np.save(buf, emb, allow_pickle=False)
                _atomic_write(path, buf.getvalue())
        arr = np.load(path, allow_pickle=False)
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()

    def prefill(
        self,
        rgb: np.ndarray,
        points_per_side: int,
        pred_iou_thresh: float | None,
        stability_thresh: float | None,
    ) -> tuple[list[dict], float]:
        """Stage 2: the masks the automatic generator is confident about, as COCO RLE, and the seconds it took."""
        import torch

        from segany.automatic import SamAutomaticMaskGenerator

        with self._compute_lock, torch.inference_mode():
            gen = SamAutomaticMaskGenerator(
                self.sam(),
                points_per_side=points_per_side,
                pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_thresh,
                output_mode="coco_rle",
            )
            t0 = time.perf_counter()
            masks = gen.generate(rgb)
            seconds = time.perf_counter() - t0
        return masks, seconds
