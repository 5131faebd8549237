"""The one place that reads model weights from disk.

* `.safetensors` is the preferred format (no code can run while reading it); segany's own checkpoints carry
  their `SamConfig` as JSON in the safetensors metadata, so a file alone says what to build.
* `.pth` files (the official release format) are read only with `torch.load` and `weights_only=True,
  map_location="cpu"`: a pickle that tries to build any object beyond tensors and plain containers is
  refused with `CheckpointError`. There is no fallback to unsafe loading.
* Loading is strict and all-or-nothing: the error counts the missing / unexpected keys and wrong shapes and
  names the first few of each (``CheckpointError.details`` lists them all), and the model is left untouched
  unless the whole state_dict fits.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from segany.build import CONFIGS, SamConfig
from segany.build_sam2 import Sam2Config

CONFIG_METADATA_KEY = "segany_config"
GENERATOR_METADATA_KEY = "segany_generator_defaults"  # JSON: the automatic generator's recommended filters
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# names of each kind of problem that a `check_state_dict` message shows (`CheckpointError.details` has all)
FIRST_NAMES = 3


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit the model.

    ``str()`` is one line; ``details`` (None when there is nothing more) is the full, multi-line account, e.g.
    every mismatched key (the CLI prints it with ``--debug``).
    """

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat state_dict from `.safetensors` or `.pth`/`.pt` without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused — the pickle asks to run code or build objects that are not plain tensors "
            f"(weights_only=True). Only load checkpoints you trust, and convert them to .safetensors in a "
            f"sandbox. Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # training checkpoints nest the weights under "model"; official ones are flat
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat mapping of parameter names to tensors")
    return {str(k): v for k, v in obj.items()}


def read_config(path: str | Path) -> SamConfig | None:
    """The `SamConfig` stored in a segany safetensors file, or None for files without one."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(2, "checkpoint not found", str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    text = meta.get(CONFIG_METADATA_KEY)
    if not text:
        return None
    try:
        return SamConfig.from_json(text)
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: invalid {CONFIG_METADATA_KEY} metadata ({e})") from e


def read_generator_defaults(path: str | Path) -> dict[str, float]:
    """The automatic-generator settings a segany safetensors file recommends (``{}`` when it has none)."""
    import json

    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(GENERATOR_METADATA_KEY)
    if not text:
        return {}
    raw = json.loads(text)
    allowed = {"pred_iou_thresh", "stability_score_thresh"}
    if (
        not isinstance(raw, dict)
        or set(raw) - allowed
        or not all(isinstance(v, int | float) for v in raw.values())
    ):
        raise CheckpointError(f"{path}: malformed {GENERATOR_METADATA_KEY} metadata {text[:200]!r}")
    return {k: float(v) for k, v in raw.items()}


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file, as stored (dtype kept), and its string metadata: what a rewrite of
    the file needs to change one part and keep the rest."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    return tensors, meta


def write_generator_defaults(path: str | Path, defaults: Mapping[str, float]) -> None:
    """Store recommended generator settings in a segany safetensors file, keeping its tensors and config."""
    import json

    path = Path(path)
    tensors, meta = read_safetensors(path)
    meta[GENERATOR_METADATA_KEY] = json.dumps({k: float(v) for k, v in sorted(defaults.items())})
    save_safetensors(path, tensors, metadata=meta)
    read_generator_defaults(path)  # refuses what it could not read back


def _first(items: list[str], n: int = FIRST_NAMES) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path | None = None
) -> None:
    """Raise `CheckpointError` if any key/shape/dtype/value does not fit; return silently if it all fits.

    The message counts each kind of problem and names the first `FIRST_NAMES` of each; ``details`` names them
    all. ``source`` (the checkpoint's path) starts the message.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [k for k in sorted(set(expected) & set(state_dict)) if state_dict[k].shape != expected[k].shape]
    # integer tensors only where the model has an integer buffer of that dtype (BatchNorm's num_batches_tracked)
    dtypes = [
        f"{k}: {v.dtype}"
        for k, v in state_dict.items()
        if v.dtype not in _FLOAT_DTYPES and not (k in expected and expected[k].dtype == v.dtype)
    ]
    kinds = [
        ("missing key(s)", missing),
        ("unexpected key(s)", unexpected),
        ("wrong shape(s)", shapes),
        ("non-float tensor(s)", dtypes),
    ]
    if not any(items for _, items in kinds):
        bad = [k for k, v in state_dict.items() if not torch.isfinite(v).all()]
        kinds.append(("tensor(s) with non-finite values", bad))
    kinds = [(what, items) for what, items in kinds if items]
    if kinds:
        prefix = f"{source}: " if source is not None else ""
        shown = {
            k: f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
            for k in shapes
        }
        summary = " | ".join(
            f"{len(items)} {what}: {_first([shown.get(k, k) for k in items])}" for what, items in kinds
        )
        details = "\n".join(
            f"{len(items)} {what}:\n" + "\n".join(f"  {shown.get(k, k)}" for k in items)
            for what, items in kinds
        )
        raise CheckpointError(f"{prefix}state_dict does not fit the model — {summary}", details)


def load_weights_into(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path | None = None
) -> None:
    """Strict, validated load; the model is unchanged if anything does not fit.

    Only the keys that the model's modules declare unused (`drop_unused_keys`) are dropped first.
    """
    state_dict = drop_unused_keys(model, state_dict)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(dict(state_dict), strict=True)


def drop_unused_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict without the keys that the model's modules declare unused in their
    ``UNUSED_CHECKPOINT_KEYS`` (MobileSAM's checkpoint keeps TinyViT's ImageNet classifier, ``head.*`` and
    ``norm_head.*``, which SAM never runs). Exactly those are dropped, present or not; every other key still
    goes through the strict check."""
    unused = {
        f"{name}.{key}" if name else key
        for name, module in model.named_modules()
        for key in getattr(module, "UNUSED_CHECKPOINT_KEYS", ())
    }
    return {k: v for k, v in state_dict.items() if k not in unused}


def infer_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which official model a state_dict belongs to, from its keys and encoder shapes: vit_b / vit_l / vit_h,
    vit_t (MobileSAM's TinyViT stem), and their HQ-SAM versions (hq_*, with the decoder's HQ token)."""
    hq = "mask_decoder.hf_token.weight" in state_dict
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:  # TinyViT's convolutional stem
        return "hq_vit_tiny" if hq else "vit_t"
    pos = state_dict.get("image_encoder.pos_embed")
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    if pos is not None:
        for kind, cfg in CONFIGS.items():
            if (
                cfg.encoder_type == "vit"
                and cfg.hq_token == hq
                and pos.shape[-1] == cfg.encoder_embed_dim
                and depth == cfg.encoder_depth
            ):
                return kind
    raise CheckpointError(
        f"not an official SAM size (embed dim {None if pos is None else pos.shape[-1]}, depth {depth})"
    )


def save_safetensors(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: SamConfig | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors (and the config that builds them, plus any string metadata) atomically: temp file in the
    same folder, fsync, rename. A crash leaves either the old file or the new one, never half of one."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    if config is not None:
        meta[CONFIG_METADATA_KEY] = config.to_json()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta or None)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are meant to be shared and shipped
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def convert(src: str | Path, dst: str | Path, kind: str | None = None) -> SamConfig | Sam2Config:
    """Convert an official `.pth` / `.pt` into `.safetensors`, validated against the architecture it claims.

    SAM, MobileSAM and HQ-SAM files get their `SamConfig` embedded (the file alone then says what to build);
    SAM 2 files (``sam2*_hiera_*``, kind inferred from the keys and shapes when not given) keep their own key
    layout, video-memory weights included, and load back through their registry name
    (``--model sam2.1_hiera_tiny --checkpoint FILE.safetensors``).
    """
    from segany.build import build_sam
    from segany.build_sam2 import SAM2_CONFIGS, build_sam2

    state_dict = load_state_dict(src)
    if kind is None and any(k.startswith("image_encoder.trunk.") for k in state_dict):
        kind = infer_sam2_kind(state_dict, src)
    if kind in SAM2_CONFIGS:
        sam2_config = SAM2_CONFIGS[kind]
        with torch.device("meta"):
            sam2 = build_sam2(sam2_config)
        check_state_dict(sam2, state_dict, src)
        save_safetensors(dst, state_dict)
        return sam2_config
    kind = kind or infer_kind(state_dict)
    if kind not in CONFIGS:
        raise CheckpointError(
            f"unknown model kind {kind!r}; choose one of {sorted(CONFIGS) + sorted(SAM2_CONFIGS)}"
        )
    config = CONFIGS[kind]
    with torch.device("meta"):
        model = build_sam(config)
    state_dict = drop_unused_keys(model, state_dict)
    check_state_dict(model, state_dict, src)
    save_safetensors(dst, state_dict, config)
    return config


def infer_sam2_kind(state_dict: Mapping[str, torch.Tensor], source: str | Path | None = None) -> str:
    """The SAM 2 / 2.1 registry name whose model takes exactly this state_dict (each is built on the meta device:
    no memory, and the strict check decides, so sizes and the 2 / 2.1 video-memory keys are told apart)."""
    from segany.build_sam2 import SAM2_CONFIGS, build_sam2

    for name, config in SAM2_CONFIGS.items():
        with torch.device("meta"):
            model = build_sam2(config)
        try:
            check_state_dict(model, state_dict, source)
        except CheckpointError:
            continue
        return name
    raise CheckpointError(
        f"{source}: a SAM 2 state_dict (image_encoder.trunk.*) that fits none of {', '.join(SAM2_CONFIGS)}; name "
        "the model with --model to see which keys differ"
    )
