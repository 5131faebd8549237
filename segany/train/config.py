"""Typed training configuration, loaded from YAML and stored inside every checkpoint.

A YAML file has the sections ``model`` (a preset name of `segany.build.CONFIGS` plus `SamConfig` field
overrides, or all fields), ``data``, ``optim`` and ``train``; unknown keys are errors, not silently ignored.
A file may start from another with ``base: other.yaml`` (a path relative to the file): mappings are merged key
by key, anything else (lists included) is replaced, so a follow-on training stage states only what it changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from segany.build import CONFIGS, SamConfig
from segany.train.data import SourceConfig
from segany.train.losses import LossWeights


@dataclass
class OptimConfig:
    """AdamW with linear warmup, step decay and layer-wise lr decay (SAM App. A; ViT-H values by default)."""

    lr: float = 8e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 250
    # lr x gamma at each milestone, as fractions of the total steps (paper: 60k and 86,666 of 90k)
    milestones: tuple[float, ...] = (0.6667, 0.963)
    gamma: float = 0.1
    layer_decay: float = 0.8
    grad_clip: float = 1.0  # max global grad norm; 0 disables (the paper does not state one)

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup_steps >= 0")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1], got {self.milestones}")


@dataclass
class DataConfig:
    """Where the training images come from and how they are turned into prompts' ground truth."""

    root: str = "../shared/data"  # sources' roots are relative to this (overridable with --data-root)
    sources: list[SourceConfig] = field(default_factory=list)
    masks_per_image: int = 16  # the paper samples up to 64 per GPU
    max_mask_fraction: float = 0.9
    min_mask_pixels: int = 16
    # masks are picked with probability ~ area ** area_power (0: uniform, the paper; 0.5 favours objects over
    # the many tiny COCO parts, closer to what interactive benchmarks ask for)
    area_power: float = 0.0
    lsj_scale: tuple[float, float] | None = (0.5, 1.5)  # large-scale jitter; None = plain resize-and-pad
    hflip_p: float = 0.5
    color_jitter_p: float = 0.5
    copy_paste_p: float = 0.3
    num_workers: int = 0
    # > 0: each image also carries up to this many of its other masks that overlap a sampled one, and a first
    # click inside one of them has it as a second right answer (whole/part; `segany.train.prompts`); 0: the paper
    max_others: int = 0
    # share of every training folder's images held out as the validation split (`segany.data.split`); the pack
    # leaves them out, and settings are chosen on them
    validation_fraction: float = 0.0

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if self.masks_per_image < 1:
            raise ValueError("masks_per_image must be >= 1")
        if self.max_others < 0:
            raise ValueError(f"max_others must be >= 0, got {self.max_others}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


@dataclass
class MAEConfig:
    """MAE pretraining of the encoder (`segany.train.mae`): MAE's recipe at a small scale."""

    steps: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


@dataclass
class TrainConfig:
    model: SamConfig = field(default_factory=lambda: CONFIGS["tiny"])
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    loss: LossWeights = field(default_factory=LossWeights)  # the paper's unless a config says otherwise
    steps: int = 100
    batch_size: int = 2
    n_points: int = 8  # corrective points after the first prompt
    n_empty: int = 2  # rounds with only the mask fed back
    # share of corrective clicks put at the interior-most error pixel (the evaluation protocol's click) instead
    # of uniformly in the error region (the paper's); 0 is the paper
    center_click_p: float = 0.0
    # > 0: tie and scale the decoder's attention projections at the start of a from-scratch run (see
    # `segany.train.trainer.positional_attention_init`); 0 keeps PyTorch's init (the official code's)
    decoder_attn_init_gain: float = 0.0
    # > 0: on the ambiguous first point also supervise the single-mask token (token 0) against the sampled mask,
    # with this weight; the paper (0) never trains token 0 on one point, so `multimask_output=False` on a first
    # click answers with an untrained output
    single_mask_first_weight: float = 0.0
    # share of corrective clicks replaced by a negative click on the background near the object, where the mask
    # may already be right (0: the paper, whose clicks all come from the error region)
    background_click_p: float = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    freeze_encoder: bool = False  # decoder-only fine-tuning
    init: str | None = (
        None  # "vit_b:PATH" (official weights), "mae:PATH" (encoder only) or a segany checkpoint
    )
    threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 10
    ckpt_every_min: float = 3.0
    ckpt_every_steps: int = 0  # 0: by time only

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.n_points < 0 or self.n_empty < 0:
            raise ValueError("n_points and n_empty must be >= 0")
        if not 0.0 <= self.center_click_p <= 1.0:
            raise ValueError(f"center_click_p must be in [0, 1], got {self.center_click_p}")
        if not 0.0 <= self.background_click_p <= 1.0:
            raise ValueError(f"background_click_p must be in [0, 1], got {self.background_click_p}")
        if self.single_mask_first_weight < 0:
            raise ValueError(f"single_mask_first_weight must be >= 0, got {self.single_mask_first_weight}")
        if self.decoder_attn_init_gain < 0:
            raise ValueError(
                f"decoder_attn_init_gain must be >= 0 (0: off), got {self.decoder_attn_init_gain}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        model = _model_config(raw.pop("model", {"preset": "tiny"}))
        data = _build(DataConfig, raw.pop("data", {}), "data")
        optim = _build(OptimConfig, raw.pop("optim", {}), "optim")
        mae = _build(MAEConfig, raw.pop("mae", {}), "mae")
        loss = _build(LossWeights, raw.pop("loss", {}), "loss")
        train = raw.pop("train", {})
        if raw:
            # the flat form (as stored in checkpoints) puts the train fields at top level
            train = {**raw, **train}
        return _build(
            cls, {**train, "model": model, "data": data, "optim": optim, "mae": mae, "loss": loss}, "train"
        )

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _build(cls: Any, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    clean = {k: (v if k == "sources" else _tuples(v)) for k, v in raw.items()}
    return cls(**clean)


def _model_config(raw: dict[str, Any] | SamConfig) -> SamConfig:
    if isinstance(raw, SamConfig):
        return raw
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset is not None:
        if preset not in CONFIGS:
            raise ValueError(f"model.preset {preset!r} unknown; choose one of {sorted(CONFIGS)}")
        base = asdict(CONFIGS[preset])
        unknown = set(raw) - set(base)
        if unknown:
            raise ValueError(f"model: unknown key(s) {sorted(unknown)}")
        return replace(CONFIGS[preset], **{k: _tuples(v) for k, v in raw.items()})
    return SamConfig.from_dict(raw)


def load_config(path: str | Path) -> TrainConfig:
    return TrainConfig.from_dict(_read_yaml(Path(path), ()))


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The file's mapping with its ``base:`` chain resolved (base first, this file's keys on top)."""
    import yaml

    path = path.resolve()
    if path in chain:
        names = " -> ".join(p.name for p in (*chain, path))
        raise ValueError(f"config base chain loops: {names}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at top level, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"{path}: base must be a file name, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ValueError(f"{path}: base config {base!r} not found at {base_path}")
    return _merge(_read_yaml(base_path, (*chain, path)), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
