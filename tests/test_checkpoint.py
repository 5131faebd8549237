"""Safe, strict checkpoint loading: official layouts, refusal of code-running pickles, clear errors."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from paths import REFERENCE

from segany.build import CONFIGS, TINY, build_sam, sam_model_registry
from segany.checkpoint import CheckpointError, convert, load_state_dict, read_config, save_safetensors

REPO = Path(__file__).resolve().parents[1]


def _reference_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    lines = (REFERENCE / f"sam_{kind}_keys_shapes.txt").read_text().strip().splitlines()
    return {k: tuple(ast.literal_eval(s)) for k, s in (line.split("\t") for line in lines)}


@pytest.mark.parametrize("kind", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_matches_official_keys_and_shapes(kind):
    with torch.device("meta"):
        model = build_sam(CONFIGS[kind])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _reference_shapes(kind)


@pytest.mark.parametrize("kind", ["vit_l", "vit_h"])
def test_official_sized_pth_loads_strictly(tmp_path, kind):
    """A file laid out like the official vit_l / vit_h checkpoint (zeros, right keys and shapes) loads."""
    shapes = _reference_shapes(kind)
    path = tmp_path / f"sam_{kind}.pth"
    torch.save({k: torch.zeros(()).expand(s) for k, s in shapes.items()}, path)  # stride-0: tiny file
    with torch.device("meta"):
        model = build_sam(CONFIGS[kind])
    sd = load_state_dict(path)
    model.load_state_dict(sd, strict=True, assign=True)
    assert sum(v.numel() for v in sd.values()) == sum(p.numel() for p in model.state_dict().values())


def test_official_pth_round_trip_with_oracle(tmp_path):
    """A checkpoint saved by the official package loads into segany and back, bit for bit."""
    from oracle import build_official, randomize_

    theirs = build_official(TINY)
    sd = randomize_(theirs, 7)
    path = tmp_path / "official.pth"
    torch.save(theirs.state_dict(), path)
    ours = sam_model_registry["tiny"](checkpoint=path)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k


class _Exploit:
    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    canary = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "payload": _Exploit(str(canary))}, path)
    # sanity: the file really does run code when loaded unsafely (in a throwaway process)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert canary.exists(), "the exploit file is not a real exploit"
    canary.unlink()
    with pytest.raises(CheckpointError, match="refused"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="refused"):
        sam_model_registry["tiny"](checkpoint=path)
    assert not canary.exists()


def test_raw_pickle_file_is_refused(tmp_path):
    canary = tmp_path / "pwned2"
    path = tmp_path / "evil2.pt"
    path.write_bytes(pickle.dumps(_Exploit(str(canary))))
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not canary.exists()


def test_only_one_torch_load_in_the_package():
    hits = []
    for f in (REPO / "segany").rglob("*.py"):
        text = f.read_text()
        if "torch.load(" in text:
            hits.append(
                (f.relative_to(REPO).as_posix(), text.count("torch.load("), "weights_only=True" in text)
            )
    assert [h[:2] for h in hits] == [("segany/checkpoint.py", 1)], hits
    assert all(h[2] for h in hits)


def test_strict_errors_name_every_problem(tmp_path):
    model = build_sam(TINY)
    sd = dict(model.state_dict())
    sd.pop("mask_decoder.iou_token.weight")
    sd["extra.weight"] = torch.zeros(3)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(2, 2)
    path = tmp_path / "bad.safetensors"
    save_safetensors(path, sd)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        sam_model_registry["tiny"](checkpoint=path)
    msg = str(e.value)
    for needle in (
        "mask_decoder.iou_token.weight",
        "extra.weight",
        "prompt_encoder.no_mask_embed.weight",
        "(2, 2)",
    ):
        assert needle in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_non_finite_weights_refused(tmp_path):
    sd = dict(build_sam(TINY).state_dict())
    sd["mask_decoder.iou_token.weight"] = torch.full_like(sd["mask_decoder.iou_token.weight"], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_safetensors(path, sd)
    with pytest.raises(CheckpointError, match="non-finite"):
        sam_model_registry["tiny"](checkpoint=path)


def test_garbage_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(CheckpointError):
        load_state_dict(junk)
    bad_zip = tmp_path / "bad.pth"
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    with pytest.raises(CheckpointError):
        load_state_dict(bad_zip)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\xff" * 20)
    with pytest.raises(CheckpointError):
        load_state_dict(bad_st)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.pth")


def test_convert_cli_round_trip(tmp_path):
    from segany.cli import main

    shapes = _reference_shapes("vit_b")
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    src = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sd, src)
    dst = tmp_path / "sam_vit_b.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    assert read_config(dst) == CONFIGS["vit_b"]
    back = load_state_dict(dst)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError):
        convert(src, tmp_path / "x.safetensors", kind="vit_l")
