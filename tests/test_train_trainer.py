"""Trainer: real-image smoke training, exact resume after a real kill, checkpoints, schedule, MAE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from paths import DATA  # noqa: E402
from patience import PATIENCE_S

from segany.build import TINY, TINY_CONV, build_sam_from_checkpoint
from segany.train.config import DataConfig, OptimConfig, TrainConfig, load_config
from segany.train.data import SourceConfig

REPO = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not (DATA / "coco_subsets" / "instances.json").is_file(), reason="no shared data"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: extra threads only spin
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real COCO images with their instance masks, pre-resized to 256 px."""
    from segany.data.coco import CocoInstances
    from segany.train.cache import pack_samples

    if not (DATA / "coco_subsets" / "instances.json").is_file():
        pytest.skip("no shared data")
    ds = CocoInstances(DATA / "coco_subsets")
    path = tmp_path_factory.mktemp("pack") / "coco8.npz"
    pack_samples((ds[i] for i in range(8)), path, 256)
    return path


def _cfg(pack: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        model=replace(TINY, drop_path_rate=0.1),
        data=DataConfig(
            root=str(pack.parent),
            sources=[SourceConfig(root=pack.name, kind="pack")],
            masks_per_image=4,
            lsj_scale=(0.8, 1.25),
            copy_paste_p=0.3,
        ),
        optim=OptimConfig(lr=2e-3, warmup_steps=2, milestones=(0.8,)),
        steps=6,
        batch_size=2,
        n_points=2,
        n_empty=1,
        log_every=1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


# the train command alone, so that the test does not depend on every other command importing
_CLI = (
    "import argparse, sys; from segany.cli import train as t; p = argparse.ArgumentParser(); "
    "t.add_parser(p.add_subparsers()); sys.exit(t.run(p.parse_args(sys.argv[1:])))"
)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_pack_roundtrip(pack: Path) -> None:
    from segany.train.cache import PackedSamples

    p = PackedSamples(pack)
    assert len(p) == 8 and p.long_side == 256
    s = p[0]
    assert max(s.image.shape[:2]) <= 256 and s.masks.shape[1:] == s.image.shape[:2] and len(s.masks) > 0
    assert s.masks.reshape(len(s.masks), -1).any(1).all()


def test_a_pack_of_folders_keeps_the_configured_weights(pack: Path, tmp_path: Path) -> None:
    """`segany train --data PACK` used to draw every packed image alike, whatever the config's folder weights."""
    import numpy as np

    from segany.data.sample import Sample
    from segany.train.cache import PackedSamples, pack_sources
    from segany.train.data import mixed_stream, open_sources, sources_from_pack

    coco = PackedSamples(pack)
    a = [coco[i] for i in range(4)]
    # folder "b": 2 images x 3 annotators, as BSDS500's reader yields them; the pack merges them to 2 entries
    b = [
        Sample(image=coco[4 + i].image, masks=coco[4 + i].masks, source=f"b/{i}#{k}")
        for i in range(2)
        for k in range(3)
    ]
    path = tmp_path / "ab.npz"
    assert pack_sources([("a", a), ("b", b)], path, 256) == {
        "images": 6,
        "masks": sum(len(x.masks) for x in a) + 3 * sum(len(coco[4 + i].masks) for i in range(2)),
    }
    only_b = PackedSamples(path, origin="b")
    assert len(only_b) == 2 and only_b.sampling_size == 6
    assert [only_b[i].source for i in range(2)] == ["b/0", "b/1"]
    config = [SourceConfig(root="a", weight=1.0), SourceConfig(root="b", weight=0.5)]
    sources = sources_from_pack(path, config)
    assert [(s.origin, s.weight, s.kind) for s in sources] == [("a", 1.0, "pack"), ("b", 0.5, "pack")]
    readers = open_sources(sources, "/")
    assert readers[0]._jpeg is readers[1]._jpeg  # type: ignore[attr-defined]  # the pack is read once
    stream = mixed_stream(readers, [s.weight for s in sources], 10, None, 0.9, 0)
    np.testing.assert_allclose(stream.p, [4 / 7, 3 / 7])  # 1.0 x 4 items : 0.5 x 6 items, as from the folders

    with pytest.raises(ValueError, match=r"not the configured \['c'\]"):
        sources_from_pack(path, [*config, SourceConfig(root="c")])
    with pytest.warns(UserWarning, match=r"\['b'\] are not in the config"):
        assert [s.origin for s in sources_from_pack(path, config[:1])] == ["a"]
    # a pack of other folders than the config's replaces them, as --data always did
    assert sources_from_pack(path, [SourceConfig(root="c")]) == [
        SourceConfig(root=str(path.resolve()), kind="pack")
    ]
    with pytest.raises(ValueError, match="no folder 'z'"):
        PackedSamples(path, origin="z")
    # a pack that does not record its folders: one uniform source, and the lost weights are said out loud
    with pytest.warns(UserWarning, match="do not apply"):
        assert sources_from_pack(pack, config) == [SourceConfig(root=str(pack.resolve()), kind="pack")]
    with pytest.raises(ValueError, match="does not record its folders"):
        PackedSamples(pack, origin="a")


def test_masks_that_vanish_at_the_loss_resolution_are_not_used() -> None:
    import numpy as np

    from segany.train.data import TrainItems

    items = TrainItems.__new__(TrainItems)  # only the mask filter is exercised
    items.min_mask_pixels, items.loss_stride = 4, 4
    m = np.zeros((3, 16, 16), dtype=bool)
    m[0, 0:4, 0:4] = True  # one whole loss cell
    m[1, 2:6, 2:6] = True  # 16 px spread over 4 cells at 25 % each: empty after area downsampling
    m[2, 0:1, 0:3] = True  # under min_mask_pixels
    assert items._usable(m).tolist() == [True, False, False]


def test_numpy_rle_decoder_matches_pycocotools() -> None:
    import numpy as np
    from pycocotools import mask as mask_utils

    from segany.train.cache import decode_rle_counts

    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        m = rng.random((h, w)) < rng.random()
        if t % 3 == 0:  # long runs (multi-chunk and negative deltas)
            m = np.zeros((h, w), dtype=bool)
            m[rng.integers(0, h) :, rng.integers(0, w) :] = True
        counts = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
        assert np.array_equal(decode_rle_counts(counts, h, w), m)
    with pytest.raises(ValueError):
        decode_rle_counts(b"25", 4, 4)


@needs_data
def test_smoke_training_on_real_images_lowers_the_loss(pack: Path, tmp_path: Path) -> None:
    from segany.train.trainer import train

    cfg = _cfg(
        pack, steps=16, data=replace(_cfg(pack).data, lsj_scale=None, copy_paste_p=0.0, color_jitter_p=0.0)
    )
    res = train(cfg, tmp_path, progress=False)
    first, last = sum(res.losses[:4]) / 4, sum(res.losses[-4:]) / 4
    assert last < 0.8 * first, res.losses
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert (tmp_path / "loss.png").stat().st_size > 1000
    # the exported model is self-describing and loads through the normal builder
    model = build_sam_from_checkpoint(tmp_path / "model.safetensors")
    assert model.image_encoder.img_size == 256
    assert json.loads((tmp_path / "model.json").read_text())["encoder_embed_dim"] == 32


@needs_data
def test_resume_after_a_real_kill_is_bit_exact(pack: Path, tmp_path: Path) -> None:
    from segany.train.trainer import train

    cfg = _cfg(pack, steps=6, ckpt_every_steps=1, threads=1)
    ref = tmp_path / "ref"
    train(cfg, ref, progress=False)

    run = tmp_path / "killed"
    run.mkdir()
    (run / "start.json").write_text(cfg.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "train", str(run / "start.json"), "--out", str(run), "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + PATIENCE_S
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "log.jsonl"
        steps = [json.loads(x)["step"] for x in log.read_text().splitlines()] if log.exists() else []
        if steps and steps[-1] >= 3:
            proc.send_signal(signal.SIGKILL)
            killed_at = steps[-1]
            break
        time.sleep(0.05)
    proc.wait(30)
    assert killed_at is not None, f"run ended before the kill: rc={proc.returncode} {proc.stderr.read()!r}"
    assert not (run / "model.safetensors").exists()  # it really died before finishing
    res = train(cfg, run, resume=True, progress=False)
    assert res.step == 6
    a, b = _weights(ref / "model.safetensors"), _weights(run / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_data
def test_in_process_stop_and_resume_matches_and_keeps_the_log(pack: Path, tmp_path: Path) -> None:
    from segany.train.trainer import load_training_state, train

    cfg = _cfg(pack, steps=4, ckpt_every_steps=2)
    train(cfg, tmp_path / "ref", progress=False)
    out = tmp_path / "run"
    train(cfg, out, progress=False, stop_after=3)  # checkpoint at 2, "dies" after 3
    st = load_training_state(out / "last.safetensors")
    assert st.step == 2 and st.config == cfg and st.optimizer["state"]
    train(cfg, out, resume=True, progress=False)
    a, b = _weights(tmp_path / "ref" / "last.safetensors"), _weights(out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optim.")))
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@needs_data
def test_frozen_encoder_trains_only_the_decoder(pack: Path, tmp_path: Path) -> None:
    from segany.train.trainer import train

    cfg = _cfg(pack, steps=2, freeze_encoder=True)
    train(cfg, tmp_path / "a", progress=False)
    init = tmp_path / "init.safetensors"
    # same initial weights (same seed): the encoder must be unchanged, the decoder not
    from segany.build import build_sam
    from segany.checkpoint import save_safetensors

    torch.manual_seed(cfg.seed)
    save_safetensors(init, build_sam(cfg.model).state_dict(), cfg.model)
    before, after = _weights(init), _weights(tmp_path / "a" / "model.safetensors")
    enc = [k for k in before if k.startswith("image_encoder.")]
    dec = [k for k in before if k.startswith("mask_decoder.")]
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)


@needs_data
def test_time_budget_stops_cleanly_and_saves(pack: Path, tmp_path: Path) -> None:
    from segany.train.trainer import train

    res = train(_cfg(pack, steps=1000), tmp_path, progress=False, time_budget_min=0.05)
    assert res.stopped_early and 1 <= res.step < 1000
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "last.safetensors").exists()


def test_lr_schedule_and_layer_decay() -> None:
    from segany.build import build_sam
    from segany.train.trainer import layer_id, lr_at, param_groups

    o = OptimConfig(lr=1.0, warmup_steps=4, milestones=(0.5, 0.75), gamma=0.1, layer_decay=0.5)
    assert [lr_at(s, 100, o) for s in (0, 3, 4, 49)] == [0.25, 1.0, 1.0, 1.0]
    assert lr_at(50, 100, o) == pytest.approx(0.1) and lr_at(75, 100, o) == pytest.approx(0.01)
    assert layer_id("image_encoder.pos_embed", 2) == 0
    assert layer_id("image_encoder.blocks.1.attn.qkv.weight", 2) == 2
    assert layer_id("mask_decoder.iou_token.weight", 2) == 3
    groups = param_groups(build_sam(TINY), o, TINY.encoder_depth)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["image_encoder.patch_embed.proj.weight"]["lr_scale"] == 0.125
    assert by_name["mask_decoder.output_upscaling.0.weight"]["lr_scale"] == 1.0
    assert by_name["mask_decoder.mask_tokens.weight"]["weight_decay"] == 0.0
    assert by_name["image_encoder.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0
    assert by_name["mask_decoder.iou_prediction_head.layers.2.weight"]["weight_decay"] == o.weight_decay


def test_refit_steps_follows_the_time_left_without_undoing_a_decay() -> None:
    from segany.train.trainer import refit_steps

    ms = (0.6, 0.9)
    # first fit: 25 steps done at 6.5 s/step, 100 minutes left -> 25 + 923 steps, capped by the config's 4000
    assert refit_steps(25, 4000, 4000, 6000.0, 6.5, ms) == 948
    assert refit_steps(25, 4000, 1000, 60000.0, 6.5, ms) == 1000
    # the machine got faster before the first decay: the schedule grows again
    assert refit_steps(300, 948, 4000, 4000.0, 4.0, ms) == 1300
    # after the first decay (step 600 of 948 is past 0.6 x 948 = 568): a fit that would put the decay back
    # ahead of the step (0.6 x 1300 = 780) is refused; one that keeps it behind is taken
    assert refit_steps(600, 948, 4000, 2800.0, 4.0, ms) == 948
    assert refit_steps(600, 948, 4000, 1600.0, 4.0, ms) == 1000
    # a slower machine late in the run: ends sooner, still after both decays
    assert refit_steps(900, 948, 4000, 100.0, 10.0, ms) == 910
    assert refit_steps(900, 948, 4000, 0.0, 10.0, ms) == 901


def test_configs_in_the_repo_load() -> None:
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert {"tiny_smoke.yaml", "default_model.yaml", "finetune_vit_b.yaml"} <= set(names)
    for name in names:
        cfg = load_config(REPO / "configs" / name)
        assert TrainConfig.from_json(cfg.to_json()) == cfg


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("optim: {lr: 1.0e-3, lrr: 2}\n")
    with pytest.raises(ValueError, match="lrr"):
        load_config(p)


def test_config_base_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "model: {preset: tiny, image_size: 128}\n"
        "data: {sources: [{root: coco_subsets}, {root: bsds500}], masks_per_image: 3}\n"
        "optim: {lr: 1.0e-3, milestones: [0.5, 0.9]}\nseed: 1\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(
        "base: ../a.yaml\ndata: {sources: [{root: dsb2018_nuclei}]}\noptim: {milestones: [0.7]}\n"
    )
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nseed: 5\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.image_size == 128 and cfg.seed == 5
    assert [s.root for s in cfg.data.sources] == ["dsb2018_nuclei"]  # a list is replaced, not appended to
    assert cfg.data.masks_per_image == 3  # a mapping is merged key by key
    assert cfg.optim.lr == 1.0e-3 and cfg.optim.milestones == (0.7,)


def test_config_base_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ValueError, match=r"loops: x.yaml -> y.yaml -> x.yaml"):
        load_config(tmp_path / "x.yaml")
    (tmp_path / "z.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ValueError, match="missing.yaml"):
        load_config(tmp_path / "z.yaml")


def test_cpu_stage_configs_state_only_their_changes() -> None:
    """Stages 2 and 3 inherit stage 1 (base:); what they resolve to is what trained the shipped model."""
    s1, s2, s3 = (
        load_config(REPO / "configs" / n)
        for n in ("default_model_cpu.yaml", "default_model_cpu_stage2.yaml", "default_model_cpu_stage3.yaml")
    )
    assert s1.model == s2.model == s3.model
    assert (s2.data.min_mask_pixels, s2.data.area_power, s2.decoder_attn_init_gain) == (1024, 1.0, 0.0)
    assert (s3.optim.lr, s3.center_click_p, s3.single_mask_first_weight, s3.seed) == (5e-4, 0.7, 0.5, 3)
    assert s3.data == s2.data and s3.optim.warmup_steps == s2.optim.warmup_steps == 20


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("center_click_p: 1.5", "center_click_p"),
        ("decoder_attn_init_gain: -1", "init_gain"),
        ("single_mask_first_weight: -0.5", "single_mask_first_weight"),
        ("background_click_p: 2", "background_click_p"),
        ("data: {max_others: -1}", "max_others"),
        ("data: {validation_fraction: 1.0}", "validation_fraction"),
    ],
)
def test_config_rejects_out_of_range_training_options(tmp_path: Path, line: str, match: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(line + "\n")
    with pytest.raises(ValueError, match=match):
        load_config(p)


def test_evaluation_folders_are_refused(tmp_path: Path) -> None:
    from segany.train.data import open_sources

    with pytest.raises(ValueError, match="evaluation-only"):
        open_sources([SourceConfig(root="grabcut")], DATA)
    with pytest.raises(ValueError, match="evaluation-only"):
        open_sources([SourceConfig(root=str(DATA / "berkeley" / "images"))], tmp_path)


@needs_data
def test_mae_pretraining_initialises_sam(pack: Path, tmp_path: Path) -> None:
    from segany.train.config import MAEConfig
    from segany.train.mae import random_masking
    from segany.train.trainer import train

    keep, masked = random_masking(3, 256, 0.75, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert keep.shape == (3, 64) and masked.sum(1).tolist() == [192, 192, 192]
    assert not masked.gather(1, keep).any()

    from segany.train.mae import pretrain_mae

    cfg = _cfg(
        pack,
        mae=MAEConfig(
            steps=12, batch_size=2, lr=2e-3, warmup_steps=2, decoder_dim=32, decoder_heads=2, decoder_depth=1
        ),
    )
    path, losses = pretrain_mae(cfg, tmp_path, progress=False)
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    from segany.build import build_sam
    from segany.checkpoint import load_state_dict
    from segany.train.trainer import _init_weights

    model = build_sam(cfg.model)
    _init_weights(model, f"mae:{path}")
    mae_w = load_state_dict(path)
    own = model.image_encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in mae_w.items())
    res = train(replace(cfg, init=f"mae:{path}", steps=1), tmp_path / "sam", progress=False)
    assert res.step == 1


def test_init_kind_path_sets_the_architecture_and_loads_strictly(tmp_path: Path) -> None:
    from segany.build import build_sam
    from segany.checkpoint import CheckpointError, save_safetensors
    from segany.train.trainer import _init_weights, resolve_model_config

    torch.manual_seed(1)
    src = build_sam(TINY)
    path = tmp_path / "tiny.safetensors"
    save_safetensors(path, src.state_dict(), TINY)
    cfg = resolve_model_config(
        TrainConfig(model=replace(TINY, encoder_depth=3, drop_path_rate=0.2), init=f"tiny:{path}")
    )
    assert (
        cfg.model == TINY and cfg.model.drop_path_rate == 0.2
    )  # the preset's architecture, the run's drop path
    model = build_sam(cfg.model)
    _init_weights(model, cfg.init or "")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values(), strict=True)
    )
    with pytest.raises(CheckpointError):  # weights of another architecture are refused, not half-loaded
        _init_weights(build_sam(replace(TINY, encoder_depth=3)), str(path))
    with pytest.raises(ValueError, match="unknown kind"):
        resolve_model_config(TrainConfig(init="vit_q:/nonexistent.pth"))


def test_fp16_export_is_half_the_size_and_loads(tmp_path: Path) -> None:
    from segany.build import build_sam
    from segany.train.trainer import export_model

    model = build_sam(TINY)
    (tmp_path / "a").mkdir()
    full = export_model(tmp_path / "a", model, TINY).stat().st_size
    half_path = export_model(tmp_path, model, TINY, half=True)
    assert half_path.stat().st_size < 0.6 * full
    loaded = build_sam_from_checkpoint(half_path)
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == ref[k].dtype and torch.equal(v, ref[k].half().to(ref[k].dtype))


def test_area_power_favours_large_masks() -> None:
    import numpy as np

    from segany.data.sample import Sample
    from segany.train.data import TrainItems

    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, :20, :20] = True  # 400 px
    masks[1, 0:2, 25:27] = True  # 4 px
    masks[2, 30:32, 0:2] = True  # 4 px

    class Stream:
        seed = 0

        def __len__(self) -> int:
            return 400

        def __getitem__(self, i: int) -> Sample:
            return Sample(image=np.zeros((32, 32, 3), np.uint8), masks=masks, source="t")

    def share_of_big(power: float) -> float:
        items = TrainItems(Stream(), masks_per_image=1, min_mask_pixels=1, area_power=power)  # type: ignore[arg-type]
        return float(np.mean([items[i].masks[0].sum() == 400 for i in range(400)]))

    # uniform: 1/3; area ** 1: 400 / 408
    assert abs(share_of_big(0.0) - 1 / 3) < 0.08
    assert share_of_big(1.0) > 0.93


@needs_data
def test_sigterm_to_the_process_group_stops_cleanly_with_data_workers(pack: Path, tmp_path: Path) -> None:
    """A scheduler's pre-emption (or Ctrl-C) signals every process of the group: the data worker must not die
    first; the trainer stops after its step, saves and exits 0, and a resume continues from there."""
    cfg = replace(_cfg(pack, steps=500, threads=1), data=replace(_cfg(pack).data, num_workers=1))
    run = tmp_path / "run"
    run.mkdir()
    (run / "start.json").write_text(cfg.to_json())
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "train", str(run / "start.json"), "--out", str(run), "--no-progress"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as under a scheduler
    )
    deadline = time.monotonic() + PATIENCE_S
    signalled = False
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            os.killpg(proc.pid, signal.SIGTERM)
            signalled = True
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=PATIENCE_S)  # it finishes its step and saves first
    assert signalled, f"run ended before the signal: rc={proc.returncode} {err!r}"
    assert proc.returncode == 0, err.decode()[-2000:]
    from segany.train.trainer import load_training_state

    step = load_training_state(run / "last.safetensors").step
    assert 2 <= step < 500 and (run / "model.safetensors").exists()


@needs_data
def test_bf16_training_of_the_conv_encoder_runs_and_keeps_fp32_weights(pack: Path, tmp_path: Path) -> None:
    """The GPU recipe (configs/default_model.yaml) trains the conv encoder under bf16 autocast; CPU autocast runs
    the same code path, so a dtype mix-up there fails here instead of on a lent GPU."""
    from segany.train.trainer import train

    cfg = _cfg(pack, model=TINY_CONV, steps=3, precision="bf16", decoder_attn_init_gain=3.0)
    res = train(cfg, tmp_path, progress=False)
    assert len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    weights = _weights(tmp_path / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert build_sam_from_checkpoint(tmp_path / "model.safetensors").image_encoder.__class__.__name__ == (
        "ConvImageEncoder"
    )


@needs_data
def test_a_data_worker_error_ends_the_run_instead_of_hanging(pack: Path, tmp_path: Path) -> None:
    """Workers ignore SIGTERM, so interpreter exit cannot stop them: the trainer must stop them itself when a
    worker's exception ends the loop (this once left a crashed 100-minute run hanging, with its worker idle)."""
    cfg = replace(_cfg(pack, steps=50, threads=1), data=replace(_cfg(pack).data, num_workers=1))
    run = tmp_path / "run"
    run.mkdir()
    (run / "start.json").write_text(cfg.to_json())
    code = (
        "import sys\n"
        "from segany.train import data\n"
        "real = data.TrainItems.__getitem__\n"
        "def failing(self, index):\n"
        "    if index >= 6:\n"
        "        raise RuntimeError('boom from the data worker')\n"
        "    return real(self, index)\n"
        "data.TrainItems.__getitem__ = failing\n"  # forked workers inherit the patch
        "from segany.train.config import load_config\n"
        "from segany.train.trainer import train\n"
        "train(load_config(sys.argv[1]), sys.argv[2], progress=False)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run / "start.json"), str(run)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its worker: leave nothing behind
        proc.communicate()
        pytest.fail("the run hung after its data worker raised")
    assert proc.returncode != 0 and "boom from the data worker" in err


def test_items_carry_the_other_masks_that_overlap_the_picked_ones() -> None:
    import numpy as np

    from segany.data.sample import Sample
    from segany.train.data import TrainItems

    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, 4:28, 4:28] = True  # a person
    masks[1, 8:16, 8:24] = True  # its shirt
    masks[2, 28:32, 28:32] = True  # something apart

    class Stream:
        seed = 0

        def __len__(self) -> int:
            return 50

        def __getitem__(self, i: int) -> Sample:
            return Sample(image=np.zeros((32, 32, 3), np.uint8), masks=masks, source="t")

    items = TrainItems(Stream(), masks_per_image=1, min_mask_pixels=1, loss_stride=4, max_others=4)  # type: ignore[arg-type]
    for i in range(20):
        it = items[i]
        picked = it.masks[0].numpy()
        if picked.sum() == masks[1].sum():  # the shirt: its person is the other answer, the far one is not
            assert it.others is not None and it.others.shape == (1, 8, 8)
            assert it.others[0].numpy().sum() == 36  # 24 x 24 px at stride 4
        if picked.sum() == masks[2].sum():
            assert it.others is None
    assert TrainItems(Stream(), masks_per_image=1, min_mask_pixels=1)[0].others is None  # type: ignore[arg-type]


@needs_data
def test_nested_answers_and_background_clicks_train(pack: Path, tmp_path: Path) -> None:
    from segany.train.trainer import train

    cfg = _cfg(pack, steps=3, background_click_p=0.5)
    cfg = replace(cfg, data=replace(cfg.data, max_others=4))
    res = train(cfg, tmp_path, progress=False)
    assert len(res.losses) == 3 and all(0 < x < 10 for x in res.losses)


def test_a_validation_split_trains_only_from_a_pack_made_without_it(tmp_path: Path) -> None:
    import numpy as np

    from segany.data.sample import Sample
    from segany.train.cache import pack_samples, pack_sources
    from segany.train.trainer import train

    m = np.zeros((1, 32, 32), bool)
    m[0, 2:20, 2:20] = True
    samples = [Sample(np.full((32, 32, 3), i, np.uint8), m, source=f"x/{i}") for i in range(12)]
    pack_samples(samples, tmp_path / "all.npz", 32)
    cfg = TrainConfig(
        model=TINY,
        data=DataConfig(
            root=str(tmp_path), sources=[SourceConfig(root="all.npz", kind="pack")], validation_fraction=0.2
        ),
        steps=1,
    )
    with pytest.raises(ValueError, match="packed with validation_fraction 0.0"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="train from a pack"):
        train(
            replace(cfg, data=replace(cfg.data, sources=[SourceConfig(root=str(DATA / "msrc_v2"))])),
            tmp_path / "r2",
            progress=False,
        )
    pack_sources([("x", samples)], tmp_path / "split.npz", 32, validation_fraction=0.2)  # type: ignore[list-item]
    cfg = replace(cfg, data=replace(cfg.data, sources=[SourceConfig(root="split.npz", kind="pack")]))
    cfg = replace(cfg, data=replace(cfg.data, lsj_scale=None, min_mask_pixels=1), n_points=1, n_empty=0)
    assert len(train(cfg, tmp_path / "ok", progress=False).losses) == 1
