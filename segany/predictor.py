"""`SamPredictor`: encode an image once, then answer any number of prompts against it.

Drop-in for `segment_anything.SamPredictor` (same methods, arguments, return shapes and numbers), plus:
several boxes in one numpy `predict` call, a batch of images in one encoder call (`embed_images`), and image
embeddings that can be saved and loaded (`ImageEmbedding`) so an image never has to be encoded twice.
Every prompt is validated with exceptions (not `assert`, so `python -O` behaves the same).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from segany.modeling import ConvImageEncoder, ImageEncoderViT, Sam
from segany.transforms import input_transform

# a prompt may sit this many pixels outside the image (e.g. clicks on the border) before it is refused
COORD_TOLERANCE_PX = 1.0


class PromptError(ValueError):
    """A prompt with the wrong shape, values or position."""


class EmbeddingError(ValueError):
    """An image embedding that cannot be used: unreadable, or computed for another image or model."""


class UncheckedEmbeddingWarning(UserWarning):
    """An embedding saved by an older segany, without the hashes of its image and model weights."""


@dataclass
class ImageEmbedding:
    """The encoder output for one image plus what is needed to decode prompts against it.

    ``image_sha256`` (`image_sha256` of the RGB pixels) and ``model_sha256`` (`encoder_sha256` of the model)
    say which image and weights it was computed from; `SamPredictor.set_embedding` and `load` (given the image
    or model) refuse a mismatch with `EmbeddingError`. They are None for embeddings saved by segany before they
    existed (loading such a file warns that it cannot be checked) and for `set_torch_image` (no pixels).
    """

    features: torch.Tensor  # 1 x C x h x w
    original_size: tuple[int, int]  # (H, W) of the image as given
    input_size: tuple[int, int]  # (H, W) after resize-longest-side, before padding
    model_fingerprint: str  # `model_fingerprint`: still written, so that older segany versions read new files
    interm_features: torch.Tensor | None = None  # HQ-SAM models: the encoder's early features, 1×h×w×C'
    image_sha256: str | None = None
    model_sha256: str | None = None

    def save(self, path: str | Path) -> None:
        """Write as safetensors (no pickle), atomically."""
        from segany.checkpoint import save_safetensors

        meta = {
            "original_size": json.dumps(list(self.original_size)),
            "input_size": json.dumps(list(self.input_size)),
            "model_fingerprint": self.model_fingerprint,
        }
        if self.image_sha256 is not None:
            meta["image_sha256"] = self.image_sha256
        if self.model_sha256 is not None:
            meta["model_sha256"] = self.model_sha256
        tensors = {"features": self.features}
        if self.interm_features is not None:
            tensors["interm_features"] = self.interm_features
        save_safetensors(path, tensors, metadata=meta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        image: np.ndarray | None = None,
        model: Sam | None = None,
        image_format: str = "RGB",
    ) -> ImageEmbedding:
        """Read a file written by `save`; with ``image`` and/or ``model``, `check` it against them.

        A file without the image and model hashes (saved by an older segany) loads with an
        `UncheckedEmbeddingWarning`. A missing file raises FileNotFoundError, any other unreadable one
        `EmbeddingError`.
        """
        from safetensors import SafetensorError, safe_open

        if not Path(path).is_file():
            raise FileNotFoundError(2, "embedding file not found", str(path))
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
                interm = f.get_tensor("interm_features") if "interm_features" in f.keys() else None  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise EmbeddingError(f"{path}: not a readable image embedding ({e})") from e
        try:
            osz = tuple(json.loads(meta["original_size"]))
            isz = tuple(json.loads(meta["input_size"]))
            fp = meta["model_fingerprint"]
        except (KeyError, ValueError) as e:
            raise EmbeddingError(f"{path}: not a segany image embedding ({e})") from e
        emb = cls(
            features,
            (int(osz[0]), int(osz[1])),
            (int(isz[0]), int(isz[1])),
            fp,
            interm,
            image_sha256=meta.get("image_sha256"),
            model_sha256=meta.get("model_sha256"),
        )
        if emb.image_sha256 is None or emb.model_sha256 is None:
            warnings.warn(
                f"{path} was saved by an older segany, without the hashes of its image and model weights: it "
                "cannot be checked against the image it is used with (encode the image again to add them)",
                UncheckedEmbeddingWarning,
                stacklevel=2,
            )
        if image is not None or model is not None:
            emb.check(image=image, model=model, image_format=image_format)
        return emb

    def check(
        self, image: np.ndarray | None = None, model: Sam | None = None, image_format: str = "RGB"
    ) -> None:
        """Raise `EmbeddingError` unless this embedding was computed from ``image`` (H×W×3 uint8) by ``model``.

        What the embedding does not record (files from older segany) is not checked.
        """
        if model is not None:
            self._check_model(encoder_sha256(model) if self.model_sha256 else "", model_fingerprint(model))
        if image is not None:
            self._check_image(_as_rgb(np.asarray(image), image_format))

    def _check_model(self, sha: str, fingerprint: str) -> None:
        if self.model_sha256 is not None:
            ok, mine, theirs = self.model_sha256 == sha, sha, self.model_sha256
        else:  # older file: only the short fingerprint is known
            ok, mine, theirs = self.model_fingerprint == fingerprint, fingerprint, self.model_fingerprint
        if not ok:
            raise EmbeddingError(
                f"this embedding was computed by a different model (weights {theirs[:12]}, this model's "
                f"{mine[:12]}); re-encode the image"
            )

    def _check_image(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != tuple(self.original_size):
            raise EmbeddingError(
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but the embedding was computed for "
                f"{self.original_size[1]}x{self.original_size[0]}"
            )
        if self.image_sha256 is not None:
            sha = image_sha256(rgb)
            if sha != self.image_sha256:
                raise EmbeddingError(
                    f"this embedding was computed for another image of the same size (pixels "
                    f"{self.image_sha256[:12]}, this image's {sha[:12]}); re-encode the image"
                )


def image_sha256(rgb: np.ndarray) -> str:
    """SHA-256 of an image's pixels (shape and dtype, then the bytes in C order): names its content, whatever
    file it came from. Give RGB order, as `ImageEmbedding` records it."""
    a = np.ascontiguousarray(rgb)
    h = hashlib.sha256(f"{'x'.join(map(str, a.shape))}|{a.dtype}|".encode())
    h.update(a.data)  # the C-contiguous buffer, without a copy
    return h.hexdigest()


def encoder_sha256(model: Sam) -> str:
    """SHA-256 of everything an image embedding depends on: every weight and buffer of the image encoder (names,
    dtypes, shapes, bytes), its input size, the pixel normalisation and the channel order.

    The decoder is left out: an embedding stays valid for a model whose decoder alone was retrained (SAM 2: but
    for the weights applied at encoding time, ``model.embedding_weights()``: its high-resolution projections
    and no-memory token). Wrappers that keep the weights (`torch.compile`, `accelerate(model, "bf16")`) hash
    like the plain encoder; int8 quantisation changes the weights, so it changes the hash.
    """
    enc: Any = model.image_encoder
    while True:  # unwrap torch.compile's OptimizedModule and segany.acceleration's bf16 wrapper
        if isinstance(getattr(enc, "_orig_mod", None), torch.nn.Module):
            enc = enc._orig_mod
        elif type(enc).__name__ == "_Bf16Encoder":
            enc = enc.encoder
        else:
            break
    size = getattr(enc, "img_size", None) or getattr(model, "image_size", None)
    h = hashlib.sha256(f"segany image encoder|{getattr(model, 'image_format', 'RGB')}|{size}|".encode())
    for name in ("pixel_mean", "pixel_std"):
        _hash_value(h, getattr(model, name, None))
    for name, value in sorted(enc.state_dict().items()):
        h.update(f"{name}|".encode())
        _hash_value(h, value)
    # weights outside the encoder that the embedding depends on (SAM 2: no_mem_embed, conv_s0/conv_s1)
    embedding_weights = getattr(model, "embedding_weights", None)
    if embedding_weights is not None:
        for name, value in sorted(embedding_weights().items()):
            h.update(f"{name}|".encode())
            _hash_value(h, value)
    return h.hexdigest()


def _hash_value(h: Any, value: object) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_quantized:  # int8 weights: the values they stand for
            h.update(b"quantized|")
            t = t.dequantize()
        t = t.cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, (tuple, list)):
        h.update(f"seq{len(value)}|".encode())
        for v in value:
            _hash_value(h, v)
    else:
        h.update(f"{value!r}|".encode())


def model_fingerprint(model: Sam) -> str:
    """Short hash of the encoder's first and last weights: what embeddings recorded before `encoder_sha256`
    (still written to new files for older segany versions, and checked for old files)."""
    enc = model.image_encoder
    h = hashlib.sha256()
    if not isinstance(enc.neck, torch.nn.Sequential):  # SAM 2 (FPN neck): its first and last encoder weights
        params = list(enc.parameters())
        for t in (params[0], params[-1]):
            h.update(t.detach().float().cpu().numpy().tobytes())
        h.update(str(enc.img_size).encode())
        return h.hexdigest()[:16]
    neck_conv = enc.neck[2]
    assert isinstance(neck_conv, torch.nn.Conv2d)
    first: Any
    if isinstance(enc, ImageEncoderViT):
        first = enc.patch_embed.proj.weight
    elif isinstance(enc, ConvImageEncoder):
        first = enc.stem[0].weight
    else:  # TinyViT
        first = next(enc.patch_embed.parameters())  # the stem's first convolution
    assert isinstance(first, torch.Tensor)
    for t in (first, neck_conv.weight):
        h.update(t.detach().float().cpu().numpy().tobytes())
    h.update(str(enc.img_size).encode())
    return h.hexdigest()[:16]


# Magnitude given to low-res logits that the refinement flipped (see `SamPredictor._agree_low_res`).
REFINED_LOGIT = 1.0


class SamPredictor:
    def __init__(self, sam_model: Sam, refiner: Callable[..., np.ndarray] | bool | None = None) -> None:
        """``refiner``: post-processing of `predict`'s boolean masks (`segany.masks.graphcut.GraphCutRefiner`).

        None takes the model's own (``sam_model.mask_refiner``; none for every built-in model, so that the
        predictor, the generator and the annotation page show the same mask for a prompt, and official
        checkpoints' masks stay identical to the official code's); False turns it off; True uses
        a `GraphCutRefiner` with its defaults. It needs the image's pixels: it applies after `set_image`, or
        `set_embedding` given the image, not after `set_torch_image`; logits (``return_logits=True``) are never
        refined.
        """
        self.model = sam_model
        if refiner is None:
            refiner = getattr(sam_model, "mask_refiner", None)
        if refiner is True:
            from segany.masks.graphcut import GraphCutRefiner

            refiner = GraphCutRefiner()
        self.refiner: Callable[..., np.ndarray] | None = refiner or None
        self._rgb: np.ndarray | None = None
        # the model's own geometry: SAM resizes by the longest side and pads, SAM 2 stretches to a square
        self.transform = input_transform(
            getattr(sam_model, "resize_mode", "longest_side"), sam_model.image_size
        )
        self._fingerprint: str | None = None
        self._weights_sha256: str | None = None
        self._image_sha256: str | None = None  # of the image behind a set_embedding without the image
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.interm_features: torch.Tensor | None = None  # HQ-SAM: the encoder's early features, 1×h×w×C'
        self.reset_image()

    # ------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an H×W×3 uint8 image (RGB, or BGR with image_format="BGR")."""
        image = self._check_image(image, image_format)
        rgb = _as_rgb(image, image_format)
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, image.shape[:2])
        self._rgb = rgb  # kept so that a refiner, set now or later, can use the colours

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encode an already resized 1×3×h×w image (long side = model input size)."""
        s = self.model.image_encoder.img_size
        if (
            not isinstance(transformed_image, torch.Tensor)
            or transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != s
        ):
            shape = getattr(transformed_image, "shape", None)
            raise ValueError(f"set_torch_image needs a B×3×H×W tensor with long side {s}, got {shape}")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        input_image = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        self.features, self.interm_features = self.model.encode_image(input_image)
        self.is_image_set = True

    @torch.no_grad()
    def embed_images(
        self, images: list[np.ndarray], image_format: str = "RGB", batch_size: int = 4
    ) -> list[ImageEmbedding]:
        """Encode several images with batched encoder calls; use `set_embedding` to pick one."""
        out: list[ImageEmbedding] = []
        fp = self.fingerprint
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch, sizes, hashes = [], [], []
            for image in chunk:
                image = self._check_image(image, image_format)
                hashes.append(image_sha256(_as_rgb(image, image_format)))
                if image_format != self.model.image_format:
                    image = image[..., ::-1]
                resized = self.transform.apply_image(np.ascontiguousarray(image))
                t = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).float()
                batch.append(self.model.preprocess(t))
                sizes.append((image.shape[:2], resized.shape[:2]))
            feats, interms = self.model.encode_image(torch.stack(batch))
            for i, (f, (osz, isz), sha) in enumerate(zip(feats, sizes, hashes, strict=True)):
                interm = None if interms is None else interms[i : i + 1]
                emb = ImageEmbedding(f[None], (osz[0], osz[1]), (isz[0], isz[1]), fp, interm)
                emb.image_sha256, emb.model_sha256 = sha, self.weights_sha256
                out.append(emb)
        return out

    def get_embedding(self) -> ImageEmbedding:
        """The current image's embedding, ready to `save`, with the hashes of its image and this model's weights.

        The image hash is None after `set_torch_image` (no pixels) or `set_embedding` of an embedding without one.
        """
        self._require_image()
        assert self.features is not None and self.original_size is not None and self.input_size is not None
        sha = self._image_sha256
        if sha is None and self._rgb is not None:
            sha = image_sha256(self._rgb)
        return ImageEmbedding(
            self.features,
            self.original_size,
            self.input_size,
            self.fingerprint,
            self.interm_features,
            image_sha256=sha,
            model_sha256=self.weights_sha256,
        )

    def set_embedding(
        self, embedding: ImageEmbedding, image: np.ndarray | None = None, image_format: str = "RGB"
    ) -> None:
        """Use a precomputed embedding instead of running the encoder.

        ``image`` (optional, the embedded image itself) lets the refiner, if any, use its colours. An embedding of
        another model, or of another image than ``image`` (its pixel hash), is refused with `EmbeddingError`;
        what an embedding saved by an older segany does not record cannot be checked.
        """
        sha = self.weights_sha256 if embedding.model_sha256 is not None else ""
        embedding._check_model(sha, self.fingerprint)
        # The image is checked before anything changes: a refused one leaves the predictor as it was.
        rgb = None
        if image is not None:
            image = self._check_image(image, image_format)
            rgb = _as_rgb(image, image_format)
            embedding._check_image(rgb)
        self.reset_image()
        self.features = embedding.features.to(self.device)
        interm = embedding.interm_features
        self.interm_features = None if interm is None else interm.to(self.device)
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.is_image_set = True
        self._rgb = rgb
        self._image_sha256 = embedding.image_sha256

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @property
    def weights_sha256(self) -> str:
        """`encoder_sha256` of the model, computed once (about 2 s for ViT-H)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = encoder_sha256(self.model)
        return self._weights_sha256

    def get_image_embedding(self) -> torch.Tensor:
        """1×C×h×w features of the current image."""
        self._require_image()
        assert self.features is not None
        return self.features

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.is_image_set = False
        self._rgb = None
        self._image_sha256 = None
        self.features = None
        self.interm_features = None
        self._hq_features: torch.Tensor | None = None  # HQ-SAM: `_hq_image_features`, once per image
        self.original_size = None
        self.input_size = None

    # ------------------------------------------------------------------ prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        normalize_coords: bool = True,
        dynamic_multimask: bool | None = None,
        use_object_score: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts given in original-image pixels.

        Arguments:
          point_coords: N×2 (x, y); with K boxes also K×N×2 (points per box).
          point_labels: N (or K×N), 1 = foreground, 0 = background.
          box: 4 XYXY, or K×4 for K boxes at once (each box one prompt).
          mask_input: 1×256×256 low-res logits from a previous call (K×1×256×256 with K boxes).
          hq_token_only: HQ-SAM models (hq_vit_*): the HQ token's mask alone; False (the official default):
            SAM's mask plus the HQ token's.
          normalize_coords: True: point and box coordinates are pixels; False: fractions of the image's width and
            height in [0, 1] (SAM 2's argument, here for every model).
          dynamic_multimask, use_object_score: SAM 2 models only, see `predict_torch`.
        Returns:
          masks C×H×W (bool, or float logits with return_logits), iou_predictions C, low_res_logits C×256×256,
          with C = 3 (multimask) or 1; with K > 1 boxes each gets a leading K dimension. HQ-SAM models return
          one mask (C = 1) with multimask_output too, as the official HQ-SAM: the best-scored of SAM's three
          plus the HQ token's, with that best score. With a refiner (the
          default model's graph cut) the boolean masks are refined, and the low-res logits made to agree with them (so
          that feeding them back builds on the refined mask); scores, and masks with return_logits, stay the
          network's.
        """
        self._require_image()
        assert self.original_size is not None
        H, W = self.original_size
        coords_t = labels_t = box_t = mask_t = None
        n_boxes = None
        if box is not None:
            b = _as_float_array(box, "box")
            if b.ndim == 1:
                b = b[None]
            if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0:
                raise PromptError(f"box must have shape (4,) or (K, 4), got {np.shape(box)}")
            _check_boxes(b if normalize_coords else b * np.array([W, H, W, H]), H, W)
            n_boxes = b.shape[0]
            box_t = torch.as_tensor(
                self.transform.apply_boxes(b, (H, W), normalized=not normalize_coords),
                dtype=torch.float,
                device=self.device,
            )
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise PromptError("point_labels must be supplied together with point_coords")
            c = _as_float_array(point_coords, "point_coords")
            lab = np.asarray(point_labels)
            if c.ndim == 2:
                c, lab = c[None], lab[None] if lab.ndim == 1 else lab
            _check_points(c if normalize_coords else c * np.array([W, H]), lab, H, W, expect_batch=n_boxes)
            if n_boxes is not None and c.shape[0] == 1 and n_boxes > 1:
                c = np.repeat(c, n_boxes, axis=0)
                lab = np.repeat(lab, n_boxes, axis=0)
            coords_t = torch.as_tensor(
                self.transform.apply_coords(c, (H, W), normalized=not normalize_coords),
                dtype=torch.float,
                device=self.device,
            )
            labels_t = torch.as_tensor(lab.astype(np.int64), dtype=torch.int, device=self.device)
        batch = n_boxes or (coords_t.shape[0] if coords_t is not None else 1)
        if mask_input is not None:
            m = _as_float_array(mask_input, "mask_input")
            mh, mw = self.model.prompt_encoder.mask_input_size
            if m.ndim == 3:
                m = m[None]
            if m.ndim != 4 or m.shape[1:] != (1, mh, mw) or m.shape[0] not in (1, batch):
                raise PromptError(
                    f"mask_input must have shape (1, {mh}, {mw}) (or K×1×{mh}×{mw}), got {np.shape(mask_input)}"
                )
            if m.shape[0] != batch:
                m = np.repeat(m, batch, axis=0)
            mask_t = torch.as_tensor(m, dtype=torch.float, device=self.device)

        refine = self.can_refine and not return_logits
        masks, iou, low_res = self.predict_torch(
            coords_t,
            labels_t,
            box_t,
            mask_t,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            return_logits=return_logits or refine,
            dynamic_multimask=dynamic_multimask,
            use_object_score=use_object_score,
        )
        masks_np = masks.detach().cpu().numpy()
        iou_np = iou.detach().float().cpu().numpy()
        low_np = low_res.detach().float().cpu().numpy()
        if refine:
            masks_np = self.refine_masks(masks_np, point_coords, point_labels, box)
            low_np = self._agree_low_res(low_np, masks_np)
        if batch == 1:
            return masks_np[0], iou_np[0], low_np[0]
        return masks_np, iou_np, low_np

    @property
    def can_refine(self) -> bool:
        """A refiner is set and the image's pixels are known (`set_image`, or `set_embedding` with the image)."""
        return self.refiner is not None and self._rgb is not None

    def refine_masks(
        self, logits: np.ndarray, point_coords: Any = None, point_labels: Any = None, box: Any = None
    ) -> np.ndarray:
        """Boolean masks from B×C×H×W image-sized logits through the refiner, as `predict` does.

        Row b uses prompt b's points (``B×N×2``, or ``N×2`` for all rows) and box (``B×4``). For callers of
        `predict_torch` (which never refines), e.g. the instance-segmentation evaluation.
        """
        if self.refiner is None or self._rgb is None:
            raise RuntimeError(
                "no refiner, or no image pixels: use set_image (or set_embedding with the image)"
            )
        B = logits.shape[0]
        coords = None if point_coords is None else np.asarray(point_coords, dtype=np.float64)
        labels = None if point_labels is None else np.asarray(point_labels)
        if coords is not None and coords.ndim == 2:
            coords, labels = coords[None], np.asarray(labels)[None]
        boxes = None if box is None else np.asarray(box, dtype=np.float64).reshape(-1, 4)
        out = np.zeros(logits.shape, dtype=bool)
        for b in range(B):
            c = None if coords is None else coords[min(b, coords.shape[0] - 1)]
            lab = None if labels is None else labels[min(b, labels.shape[0] - 1)]
            bx = None if boxes is None else boxes[b]
            for k in range(logits.shape[1]):
                out[b, k] = self.refiner(self._rgb, logits[b, k], c, lab, bx)
        return out

    def _agree_low_res(self, low: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Low-res logits whose sign agrees with the refined masks, for feeding back as ``mask_input``.

        The next call should build on the mask the user saw, not on the network's unrefined one. Where the
        network already agrees with the refined mask (area-averaged into its low-res cell) its logit is kept;
        elsewhere the logit becomes +-``REFINED_LOGIT``. Measured on the 26 held-out COCO-MVal images of
        ``coco_subsets`` (85 objects, default model): mIoU@5 0.760 with the network's own logits fed back,
        0.776 with these.
        """
        assert self.input_size is not None
        h, w = self.input_size
        size = self.model.image_encoder.img_size
        side = low.shape[-1]
        out = low.copy()
        for idx in np.ndindex(*masks.shape[:-2]):
            frac = cv2.resize(masks[idx].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            padded = np.zeros((size, size), np.float32)
            padded[:h, :w] = frac
            cell = cv2.resize(padded, (side, side), interpolation=cv2.INTER_AREA) > 0.5
            out[idx] = np.where(
                cell, np.maximum(low[idx], REFINED_LOGIT), np.minimum(low[idx], -REFINED_LOGIT)
            )
        return out

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
        dynamic_multimask: bool | None = None,
        use_object_score: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the model input frame (`transform.apply_*_torch`).

        Arguments: point_coords B×N×2, point_labels B×N, boxes B×4, mask_input B×1×256×256; hq_token_only as
        in `predict` (HQ-SAM models only). SAM 2 models only:
          dynamic_multimask: for a single mask, fall back to the best-scored multimask output when the single
            one is unstable; None: the model's setting (on, SAM 2's default post-processing).
          use_object_score: empty the masks of prompts whose object-score logit is ≤ 0 (as SAM 2's video mode
            does); off in SAM 2's image predictor.
        Returns: masks B×C×H×W, iou_predictions B×C, low_res_logits B×C×256×256 (HQ-SAM: C = 1; SAM 2:
        clamped to ±32, as its predictor returns them).
        """
        self._require_image()
        assert self.features is not None and self.input_size is not None and self.original_size is not None
        points = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise PromptError("point_labels must be supplied together with point_coords")
            if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
                raise PromptError(f"point_coords must be B×N×2, got {tuple(point_coords.shape)}")
            if point_labels.shape != point_coords.shape[:2]:
                raise PromptError(
                    f"point_labels must be B×N = {tuple(point_coords.shape[:2])}, got {tuple(point_labels.shape)}"
                )
            if not torch.isfinite(point_coords).all():
                raise PromptError("point_coords contain NaN or inf")
            points = (point_coords, point_labels)
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise PromptError(f"boxes must be B×4, got {tuple(boxes.shape)}")
            if not torch.isfinite(boxes).all():
                raise PromptError("boxes contain NaN or inf")
            if points is not None and boxes.shape[0] != point_coords.shape[0]:  # type: ignore[union-attr]
                raise PromptError("boxes and point_coords must have the same batch size")
        if mask_input is not None:
            mh, mw = self.model.prompt_encoder.mask_input_size
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, mh, mw):
                raise PromptError(f"mask_input must be B×1×{mh}×{mw}, got {tuple(mask_input.shape)}")

        sam2_options: dict[str, Any] = {}
        if dynamic_multimask is not None:
            sam2_options["dynamic_multimask"] = dynamic_multimask
        if use_object_score:
            sam2_options["use_object_score"] = True
        if sam2_options and not hasattr(self.model.mask_decoder, "obj_score_token"):
            raise PromptError(f"{', '.join(sam2_options)}: SAM 2 models only")
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        # The encoder's extra features: HQ-SAM's early features (reduced once per image to the decoder's
        # image-side HQ features), or SAM 2's high-resolution features, which its decoder takes as they are.
        extra: dict[str, Any] = {}
        if hasattr(self.model.mask_decoder, "hq_features"):
            extra["hq_features"] = self._hq_image_features()
        elif self.interm_features is not None:
            extra["interm_embeddings"] = self.interm_features
        low_res, iou = self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            **extra,
            **sam2_options,
        )
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        limit = getattr(self.model, "low_res_logit_limit", None)
        if limit is not None:
            low_res = torch.clamp(low_res, -limit, limit)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _hq_image_features(self) -> torch.Tensor | None:
        """HQ-SAM's image-side decoder features (`MaskDecoder.hq_features`), computed once per image: they do not
        depend on the prompt (the official predictor recomputes them for every call). None for plain SAM."""
        if self.interm_features is None:
            return None
        if self._hq_features is None:
            assert self.features is not None
            self._hq_features = self.model.mask_decoder.hq_features(self.features, self.interm_features)
        return self._hq_features

    # ------------------------------------------------------------------ checks
    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def _check_image(self, image: np.ndarray, image_format: str) -> np.ndarray:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H×W×3, got shape {image.shape} (use segany.images.load_image)")
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {image.dtype} (use segany.images.load_image)")
        h, w = self.transform.get_preprocess_shape(
            image.shape[0], image.shape[1], self.transform.target_length
        )
        if min(h, w) < 1:
            raise ValueError(
                f"image of {image.shape[1]}×{image.shape[0]} px is too elongated: it would resize to {w}×{h}"
            )
        return image


def _as_rgb(image: np.ndarray, image_format: str) -> np.ndarray:
    """The pixels in RGB order, C-contiguous (the image itself when it already is; one copy for BGR)."""
    return np.ascontiguousarray(image if image_format == "RGB" else image[..., ::-1])


def _as_float_array(x: object, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PromptError(f"{name} must be numeric: {e}") from e
    if not np.isfinite(a).all():
        raise PromptError(f"{name} contains NaN or inf")
    return a


def _check_points(c: np.ndarray, lab: np.ndarray, H: int, W: int, expect_batch: int | None) -> None:
    if c.ndim != 3 or c.shape[-1] != 2 or c.shape[1] == 0:
        raise PromptError(
            f"point_coords must have shape (N, 2), got {c.shape[1:] if c.ndim == 3 else c.shape}"
        )
    if lab.shape != c.shape[:2]:
        raise PromptError(
            f"point_labels must have shape {c.shape[1:2]} to match point_coords, got {lab.shape[1:]}"
        )
    if not np.isin(lab, (0, 1)).all():
        raise PromptError(
            f"point_labels must be 0 (background) or 1 (foreground), got {np.unique(lab).tolist()}"
        )
    if expect_batch is not None and c.shape[0] not in (1, expect_batch):
        raise PromptError(f"{c.shape[0]} point sets for {expect_batch} boxes")
    t = COORD_TOLERANCE_PX
    if (
        (c[..., 0] < -t).any()
        or (c[..., 0] > W + t).any()
        or (c[..., 1] < -t).any()
        or (c[..., 1] > H + t).any()
    ):
        raise PromptError(f"point_coords outside the {W}×{H} image: {c.reshape(-1, 2).tolist()}")


def _check_boxes(b: np.ndarray, H: int, W: int) -> None:
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise PromptError(f"boxes must be XYXY with x1 >= x0 and y1 >= y0, got {b.tolist()}")
    t = COORD_TOLERANCE_PX
    if (
        (b[:, [0, 2]] < -t).any()
        or (b[:, [0, 2]] > W + t).any()
        or (b[:, [1, 3]] < -t).any()
        or (b[:, [1, 3]] > H + t).any()
    ):
        raise PromptError(f"boxes outside the {W}×{H} image: {b.tolist()}")
