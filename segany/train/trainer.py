"""The SAM training loop: same code on CPU and CUDA, exact resume, self-describing checkpoints.

One step = encode a batch of images once, run the simulated interactive rounds (`segany.train.prompts`) over
all their sampled masks, back-propagate each round as it finishes into a detached copy of the embeddings, then
back-propagate the embeddings through the encoder once, clip, and take an AdamW step.

Exactness: everything random in step ``s`` (data order, augmentation, prompts, drop path) is seeded from
``(seed, s)``, so a run resumed from the checkpoint of step ``s`` computes bit for bit what the uninterrupted run
computes on CPU. The RNG states are stored anyway for anything else that draws from them.

Files in the output folder:
  ``last.safetensors``   training state: ``model.*``, ``optim.*`` and ``rng.*`` tensors; JSON metadata ``config``,
                         ``sam_config``, ``step``, ``optimizer`` (param groups) and ``rng`` (python/numpy states).
                         Written atomically; loaded with safetensors, never unpickled.
  ``model.safetensors``  the weights alone, with the `SamConfig` in the metadata (`segany.checkpoint` format:
                         `build_sam_from_checkpoint` rebuilds it); ``model.json`` the same config.
  ``config.json``        the resolved training config; ``log.jsonl`` one line per logged step;
  ``loss.png``           the loss curve.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segany.build import CONFIGS, SamConfig, build_sam
from segany.modeling import ImageEncoderViT, Sam
from segany.train.config import OptimConfig, TrainConfig
from segany.train.data import (
    Item,
    StepBatches,
    TrainItems,
    collate_items,
    mixed_stream,
    open_sources,
    worker_init,
)
from segany.train.prompts import simulate_interactive

TRAIN_FORMAT = "segany-train-v1"
_FIT_SKIP, _FIT_AFTER = 5, 25  # steps ignored (warm-up of kernels and workers) / measured, for fit_to_budget
_REFIT_EVERY = 50  # then re-measured every so many steps: a machine's load changes during a long run
LAST = "last.safetensors"


# ----------------------------------------------------------------------------------------------- optimisation
def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warmup to ``lr`` over ``warmup_steps``, then x ``gamma`` at
    each milestone (fractions of ``total``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    drops = sum(step >= int(m * total) for m in cfg.milestones)
    return cfg.lr * cfg.gamma**drops


def refit_steps(
    step: int, steps: int, cap: int, left_s: float, per_step_s: float, milestones: tuple[float, ...]
) -> int:
    """The schedule length that fits the time left, or ``steps`` where changing it would disturb the lr.

    The new length never exceeds ``cap`` (the config's own) and never moves a milestone across ``step``: a
    decay already taken stays taken (else the lr would jump back up) and one still ahead stays ahead.
    """
    fit = min(cap, step + max(int(left_s / per_step_s), 1))
    same_side = all((step >= int(m * steps)) == (step >= int(m * fit)) for m in milestones)
    return fit if same_side and fit > step else steps


_TOKENS = ("point_embeddings", "not_a_point_embed", "no_mask_embed", "iou_token", "mask_tokens")


def _no_weight_decay(name: str, p: torch.Tensor) -> bool:
    # biases, norms, position tables and learned tokens: decaying them only pulls them towards 0
    return p.ndim <= 1 or "pos_embed" in name or "rel_pos" in name or any(t in name for t in _TOKENS)


def layer_id(name: str, depth: int) -> int:
    """0 for the patch/position embeddings, i + 1 for encoder block i, depth + 1 for the neck and the decoder."""
    if name.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed")):
        return 0
    if name.startswith("image_encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def param_groups(model: Sam, cfg: OptimConfig, depth: int) -> list[dict[str, Any]]:
    """AdamW groups by (layer, decay / no decay); ``lr_scale = layer_decay ** (depth + 1 - layer)``."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        nd = _no_weight_decay(name, p)
        g = groups.setdefault(
            (lid, nd),
            {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if nd else cfg.weight_decay,
                "lr_scale": cfg.layer_decay ** (depth + 1 - lid),
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]


# ------------------------------------------------------------------------------------------------ checkpoints
def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    py_state: tuple[Any, ...] = random.getstate()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npm = meta["numpy"]
    np.random.set_state((npm[0], np.asarray(npm[1], dtype=np.uint32), *npm[2:]))


def save_training_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int
) -> None:
    """Write model + optimizer + RNG + config + step to one safetensors file, atomically (temp, fsync, rename)."""
    from segany.checkpoint import save_safetensors

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = optimizer.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{idx}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    groups = [{k: v for k, v in g.items()} for g in osd["param_groups"]]
    rng_t, rng_m = _rng_state()
    tensors.update(rng_t)
    meta = {
        "format": TRAIN_FORMAT,
        "config": cfg.to_json(),
        "sam_config": cfg.model.to_json(),
        "step": str(step),
        "optimizer": json.dumps(groups),
        "rng": json.dumps(rng_m),
    }
    save_safetensors(path, tensors, metadata=meta)


@dataclass
class TrainingState:
    config: TrainConfig
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict[str, Any]


def load_training_state(path: str | Path) -> TrainingState:
    """Read a `save_training_state` file (safetensors: no code runs while loading)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path}: not a segany training checkpoint ({TRAIN_FORMAT})")
    tensors = load_file(str(path), device="cpu")
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    return TrainingState(
        config=TrainConfig.from_json(meta["config"]),
        step=int(meta["step"]),
        model=model,
        optimizer={"state": state, "param_groups": json.loads(meta["optimizer"])},
        rng_tensors={k: v for k, v in tensors.items() if k.startswith("rng.")},
        rng_meta=json.loads(meta["rng"]),
    )


def export_model(out_dir: Path, model: Sam, sam_config: SamConfig, half: bool = False) -> Path:
    """The shippable weights: ``model.safetensors`` (config in the metadata) + ``model.json``."""
    from segany.checkpoint import save_safetensors

    cfg = replace(sam_config, drop_path_rate=0.0)
    sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = out_dir / "model.safetensors"
    save_safetensors(path, sd, cfg)
    (out_dir / "model.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- model set-up
def _init_weights(model: Sam, init: str) -> None:
    """``kind:PATH`` (official / segany weights for the whole model), ``mae:PATH`` (encoder only) or ``PATH``."""
    from segany.checkpoint import load_state_dict, load_weights_into

    kind, _, path = init.partition(":") if ":" in init and not os.path.exists(init) else ("", "", init)
    if kind == "mae":
        from segany.train.mae import load_mae_encoder

        if not isinstance(model.image_encoder, ImageEncoderViT):
            raise ValueError("mae:PATH initialises SAM's ViT encoder; this config's encoder is convolutional")
        load_mae_encoder(model.image_encoder, path)
        return
    load_weights_into(model, load_state_dict(path))


def positional_attention_init(decoder: nn.Module, gain: float) -> int:
    """Start every decoder attention as a positional kernel: ``k_proj = q_proj = gain x`` its random init.

    Points reach the image only through attention whose logits compare ``image_pe`` with the point's Fourier
    encoding. With independent random q/k projections those logits carry no distance information, and a decoder
    trained from scratch sits on an "all background" plateau for hundreds of steps (measured: a blank image and
    the target "a disc around the click" still had IoU 0.0 after 300 steps). Tied projections make ``q·k`` a
    positive-definite form of the encodings, i.e. highest near the click; the gain sharpens it (gain 3: IoU 0.23
    by step 50 on the same task). Only for training from scratch; loaded weights are not touched.
    Returns the number of attention layers changed.
    """
    from segany.modeling.transformer import Attention

    n = 0
    with torch.no_grad():
        for m in decoder.modules():
            if isinstance(m, Attention):
                m.q_proj.weight.mul_(gain)
                m.k_proj.weight.copy_(m.q_proj.weight)
                m.k_proj.bias.copy_(m.q_proj.bias)
                n += 1
    return n


def resolve_model_config(cfg: TrainConfig) -> TrainConfig:
    """``init = "vit_b:PATH"`` fixes the architecture to that preset (keeping the configured drop path)."""
    if cfg.init and ":" in cfg.init and not os.path.exists(cfg.init):
        kind = cfg.init.split(":", 1)[0]
        if kind in CONFIGS:
            return replace(cfg, model=replace(CONFIGS[kind], drop_path_rate=cfg.model.drop_path_rate))
        if kind != "mae":
            raise ValueError(
                f"--init {cfg.init!r}: unknown kind {kind!r}; use one of {sorted(CONFIGS)} or mae"
            )
    return cfg


def augment_config(cfg: TrainConfig, colour_and_paste: bool = True) -> Any:
    from segany.data.augment import AugmentConfig

    return AugmentConfig(
        size=cfg.model.image_size,
        lsj_scale=cfg.data.lsj_scale,
        hflip_p=cfg.data.hflip_p,
        color_jitter_p=cfg.data.color_jitter_p if colour_and_paste else 0.0,
        copy_paste_p=cfg.data.copy_paste_p if colour_and_paste else 0.0,
    )


def use_trainable_attention(model: nn.Module) -> int:
    """Switch the encoder's attention to its SDPA path (``attn.fused``), which autograd can differentiate.

    The default inference path computes attention block-wise into a preallocated output (``out=``), which saves
    memory on CPU but cannot be back-propagated. Returns how many attention modules were switched.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "fused") and hasattr(m, "qkv"):
            setattr(m, "fused", True)  # noqa: B010 (an attribute of the lead's Attention, not typed on Module)
            n += 1
    return n


def _step_seed(seed: int, step: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------- one step
@dataclass
class StepStats:
    loss: float
    iou_first: float  # actual IoU of the supervised masks after the first prompt
    iou_last: float  # ... after the last round
    grad_norm: float
    masks: int
    skipped: bool


def _check_validation_split(cfg: TrainConfig, sources: list[Any]) -> None:
    """A config that holds out a validation split trains only on packs made without it: folders read directly
    would train on the held-out images."""
    from segany.train.cache import PackedSamples

    frac = cfg.data.validation_fraction
    if frac <= 0:
        return
    for src in sources:
        if not isinstance(src, PackedSamples):
            raise ValueError(
                f"data.validation_fraction is {frac}: train from a pack that leaves the split out "
                "(`segany train CONFIG --pack PATH`, then `--data PATH`), not from the folders"
            )
        have = float(src.meta.get("validation_fraction", 0.0))
        if have != frac:
            raise ValueError(
                f"{src.path} was packed with validation_fraction {have}, the config holds out {frac}; re-pack"
            )


def _others_per_mask(batch: list[Item], device: torch.device) -> torch.Tensor | None:
    """``[N, A, h, w]`` bool: for each sampled mask, its image's other masks (zero-padded), or None if no image
    of the batch has any."""
    if all(it.others is None for it in batch):
        return None
    a = max(len(it.others) for it in batch if it.others is not None)
    hw = next(it.others for it in batch if it.others is not None).shape[-2:]
    rows = []
    for it in batch:
        pad = torch.zeros(a, *hw, dtype=torch.bool)
        if it.others is not None:
            pad[: len(it.others)] = it.others
        rows.append(pad[None].expand(len(it.masks), -1, -1, -1))
    return torch.cat(rows).to(device, non_blocking=True)


def train_step(
    model: Sam,
    optimizer: torch.optim.Optimizer,
    batch: list[Item],
    cfg: TrainConfig,
    step: int,
    device: torch.device,
) -> StepStats:
    """One optimisation step on one batch (see the module docstring)."""
    torch.manual_seed(_step_seed(cfg.seed, step, 0))  # drop path and anything else on the global RNG
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    images = torch.stack([it.image for it in batch]).to(device, non_blocking=True).float()
    x = (images - model.pixel_mean) / model.pixel_std  # padding is SAM's mean colour, so it normalises to ~0
    gt = torch.cat([it.masks for it in batch]).to(device, non_blocking=True)
    image_index = torch.cat([torch.full((len(it.masks),), i, dtype=torch.long) for i, it in enumerate(batch)])
    image_index = image_index.to(device)
    others = _others_per_mask(batch, device)

    optimizer.zero_grad(set_to_none=True)
    with amp, torch.set_grad_enabled(not cfg.freeze_encoder):
        emb = model.image_encoder(x)
    leaf = emb.detach().float().requires_grad_(True)
    rounds = 1 + cfg.n_points + cfg.n_empty

    def backward(loss: torch.Tensor) -> None:
        with torch.autocast(device.type, enabled=False):
            loss.backward()

    gen = torch.Generator(device=device).manual_seed(_step_seed(cfg.seed, step, 1))
    sched_gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step, 2))
    with amp:
        records = simulate_interactive(
            model.prompt_encoder,
            model.mask_decoder,
            leaf,
            gt,
            image_index,
            generator=gen,
            schedule_generator=sched_gen,
            n_points=cfg.n_points,
            n_empty=cfg.n_empty,
            center_click_p=cfg.center_click_p,
            single_mask_first_weight=cfg.single_mask_first_weight,
            backward=backward,
            loss_weight=1.0 / rounds,
            loss_weights=cfg.loss,
            others=others,
            background_click_p=cfg.background_click_p,
        )
    if not cfg.freeze_encoder:
        assert leaf.grad is not None
        emb.backward(leaf.grad.to(emb.dtype))
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    skipped = not bool(torch.isfinite(norm))
    if not skipped:  # a NaN/inf gradient skips the step instead of poisoning the weights
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = sum(r.loss for r in records) / len(records)
    return StepStats(
        loss=loss,
        iou_first=records[0].iou,
        iou_last=records[-1].iou,
        grad_norm=float(norm),
        masks=len(gt),
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class TrainResult:
    step: int
    out_dir: Path
    losses: list[float]
    stopped_early: bool


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to stop after the current step and save (a kill -9 cannot be caught)."""

    def __init__(self) -> None:
        self.stop = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.stop = True

        old: dict[signal.Signals, Any] = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)


@contextmanager
def _workers_stopped(batches: Any) -> Iterator[None]:
    """Stop the loader's workers however the loop ends (break, return, an exception from a worker).

    The workers ignore SIGTERM (see `worker_init`), so they must be stopped through their queues: otherwise
    interpreter exit SIGTERMs them, and waits for them, forever — a crashed run hung instead of exiting.
    """
    try:
        yield
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()
            for w in getattr(batches, "_workers", []):
                if w.is_alive():  # still busy after the loader's own 5 s grace
                    w.kill()


def _write_loss_png(log_path: Path, png: Path, label: str = "loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    lines = ax.plot(steps, [r["loss"] for r in rows], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    lines += ax2.plot(
        steps, [r["iou_first"] for r in rows], color="tab:orange", alpha=0.6, label="IoU, 1st prompt"
    )
    lines += ax2.plot(
        steps, [r["iou_last"] for r in rows], color="tab:green", alpha=0.6, label="IoU, last round"
    )
    ax2.set_ylabel("IoU")
    ax2.set_ylim(0, 1)
    ax.legend(lines, [str(ln.get_label()) for ln in lines], loc="center right", fontsize=7)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    device: str = "cpu",
    resume: bool = False,
    max_steps: int | None = None,
    time_budget_min: float | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    fit_to_budget: bool = True,
    export_fp16: bool = False,
) -> TrainResult:
    """Train (or resume) a SAM model; see the module docstring for the files written.

    Arguments:
      max_steps: overrides ``cfg.steps`` (the schedule's length).
      time_budget_min: stop cleanly (and save) before this many minutes of wall time.
      stop_after: stop after this many steps *of this call* without the final save — used by tests to stand in
        for a kill; the periodic checkpoints are what a resume then starts from.
      export_fp16: write ``model.safetensors`` in float16 (half the size; loads into float32 models).
      fit_to_budget: with a time budget, measure the speed over the first steps and shorten ``steps`` (and with
        it the lr milestones) to what fits, so that a budget-limited run still anneals; re-measured every 50
        steps (`refit_steps`), so a machine that gets busier or freer later still ends on its decayed lr.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / LAST
    dev = torch.device(device)
    state: TrainingState | None = None
    if resume and last.exists():
        state = load_training_state(last)
        cfg = state.config  # the checkpoint's own config wins: resuming must not silently change the run
    if max_steps is not None:
        cfg = replace(cfg, steps=max_steps)
    cfg = resolve_model_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    model = build_sam(cfg.model)
    if state is None and cfg.init:
        _init_weights(model, cfg.init)
    elif state is None and cfg.decoder_attn_init_gain > 0:
        positional_attention_init(model.mask_decoder, cfg.decoder_attn_init_gain)
    if state is not None:
        model.load_state_dict(state.model, strict=True)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(dev).train()
    if not cfg.freeze_encoder:
        use_trainable_attention(model.image_encoder)
    if cfg.freeze_encoder:
        model.image_encoder.requires_grad_(False)
        model.image_encoder.eval()  # no drop path: it is not being trained
    groups = param_groups(model, cfg.optim, cfg.model.encoder_depth)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        fused=dev.type == "cuda",
    )
    start = 0
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        _set_rng_state(state.rng_tensors, state.rng_meta)
        start = state.step
    (out / "config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")

    sources = open_sources(cfg.data.sources, data_root or cfg.data.root)
    _check_validation_split(cfg, sources)
    stream = mixed_stream(
        sources,
        [s.weight for s in cfg.data.sources],
        cfg.steps * cfg.batch_size,
        augment_config(cfg),
        cfg.data.max_mask_fraction,
        cfg.seed,
    )
    # the loss is taken on the low-res logits: 4x the embedding grid, i.e. one cell per patch_size / 4 pixels
    loss_stride = max(1, cfg.model.patch_size // 4)
    items = TrainItems(
        stream,
        cfg.data.masks_per_image,
        cfg.data.min_mask_pixels,
        loss_stride,
        cfg.data.area_power,
        cfg.data.max_others,
    )
    sampler = StepBatches(cfg.batch_size, start, cfg.steps)
    loader = torch.utils.data.DataLoader(
        items,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_items,
        worker_init_fn=worker_init if cfg.data.num_workers > 0 else None,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
        persistent_workers=False,
    )

    log_path = out / "log.jsonl"
    if start == 0 and log_path.exists():
        log_path.unlink()
    elif log_path.exists():  # drop lines logged after the checkpoint we resume from
        kept = [
            ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start
        ]
        log_path.write_text("".join(ln + "\n" for ln in kept))

    from tqdm import tqdm

    t0 = time.monotonic()
    t_fit = t0
    last_ckpt = t0
    step = start
    losses: list[float] = []
    stopped_early = False
    step_time = 0.0
    flag = _StopFlag()
    cap_steps = cfg.steps  # a budget fit may shorten the schedule and lengthen it again, never beyond this
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, dynamic_ncols=True, desc="train")
    batches = iter(loader)
    with flag.installed(), open(log_path, "a") as log, _workers_stopped(batches):
        for batch in batches:
            ts = time.monotonic()
            set_lr(optimizer, lr_at(step, cfg.steps, cfg.optim))
            stats = train_step(model, optimizer, batch, cfg, step, dev)
            step += 1
            step_time = time.monotonic() - ts
            losses.append(stats.loss)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", iou=f"{stats.iou_last:.2f}")
            if step % cfg.log_every == 0 or step == cfg.steps or step == start + 1:
                row = {
                    "step": step,
                    "time_s": round(time.monotonic() - t0, 2),
                    "lr": lr_at(step - 1, cfg.steps, cfg.optim),
                    **asdict(stats),
                    "step_s": round(step_time, 3),
                }
                if dev.type == "cuda":
                    row["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                log.write(json.dumps(row) + "\n")
                log.flush()
            now = time.monotonic()
            if (cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0) or (
                now - last_ckpt > cfg.ckpt_every_min * 60
            ):
                save_training_state(last, model, optimizer, cfg, step)
                last_ckpt = time.monotonic()
            if stop_after is not None and step - start >= stop_after:
                bar.close()
                return TrainResult(step=step, out_dir=out, losses=losses, stopped_early=True)
            done = step - start
            if (
                fit_to_budget
                and time_budget_min is not None
                and done >= _FIT_AFTER
                and (done - _FIT_AFTER) % _REFIT_EVERY == 0
            ):
                # fit the schedule to the budget so that its lr decay happens inside it (saved with checkpoints);
                # re-measured as the run goes, from the mean step time since the warm-up steps
                per_step = (time.monotonic() - t_fit) / (done - _FIT_SKIP)
                left_s = time_budget_min * 60 - (time.monotonic() - t0) - 30.0  # keep 30 s for the saves
                fit = refit_steps(step, cfg.steps, cap_steps, left_s, per_step, cfg.optim.milestones)
                if abs(fit - cfg.steps) > max(2, cfg.steps // 100):  # 1 %: not on every wobble
                    cfg = replace(cfg, steps=fit)
                    bar.total = fit
                    bar.write(f"time budget: schedule set to {fit} steps ({per_step:.2f} s/step)")
            if step - start == _FIT_SKIP:
                t_fit = time.monotonic()
            if step >= cfg.steps:
                break
            elapsed_min = (time.monotonic() - t0) / 60
            # stop before the budget runs out, leaving room for one more step and the final save
            if time_budget_min is not None and elapsed_min + 2.5 * step_time / 60 > time_budget_min:
                stopped_early = step < cfg.steps
                break
            if flag.stop:
                stopped_early = True
                break
    bar.close()
    save_training_state(last, model, optimizer, cfg, step)
    export_model(out, model, cfg.model, half=export_fp16)
    if log_path.exists():
        w = cfg.loss
        label = f"loss ({w.focal:g} focal(α={w.focal_alpha:g}, γ={w.focal_gamma:g}) + {w.dice:g} dice + {w.iou:g} IoU MSE)"
        _write_loss_png(log_path, out / "loss.png", label)
    return TrainResult(step=step, out_dir=out, losses=losses, stopped_early=stopped_early)
