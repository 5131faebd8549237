"""Expected CLI errors (issue 15, item 3): one ``segany: error: ...`` line on stderr, exit status 2, no traceback
(unless ``--debug``) and nothing left behind; prompts checked before the model is loaded; negative numbers parse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    paths = {
        "img": d / "img.png",
        "img2": d / "img2.png",
        "trunc": d / "trunc.png",
        "ckpt": d / "tiny.safetensors",
    }
    for key in ("img", "img2"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(paths[key])
    paths["trunc"].write_bytes(paths["img"].read_bytes()[:300])
    from segany import sam_model_registry
    from segany.build import TINY
    from segany.checkpoint import save_safetensors

    save_safetensors(paths["ckpt"], sam_model_registry["tiny"]().state_dict(), TINY)
    return paths


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segany: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "image, prompt, match",
    [
        ("img", ["--point", "-10,20"], r"--point -10,20 is outside the 80×60 image"),
        ("img", ["--box", "-5,0,20,30"], r"--box -5,0,20,30 is outside the 80×60 image"),
        ("img", ["--point", "30,20", "--box", "-5,0,20,30"], r"--box -5,0,20,30 is outside"),
        ("img", ["--point", "500,20"], r"outside the 80×60 image"),
        ("img", ["--point", "nan,20"], r"--point nan,20: every number must be finite"),
        ("img", ["--point", "10,20,2"], r"LABEL must be 1 .foreground. or 0"),
        ("img", ["--box", "50,10,20,40"], r"--box 50,10,20,40: needs X0,Y0,X1,Y1 with X1 >= X0"),
        ("trunc", ["--point", "10,20"], r"trunc\.png: .*truncated"),
        ("missing", ["--point", "10,20"], r"missing\.png: No such file or directory"),
    ],
)
def test_segment_expected_errors_are_one_line_exit_2_and_leave_nothing(
    files, tmp_path, capsys, monkeypatch, image, prompt, match
):
    import segany.cli.segment as segment

    def no_model(_args):  # prompts and images are checked before the model is loaded, let alone encoding
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr(segment, "model_from_args", no_model)
    path = files.get(image, tmp_path / "missing.png")
    out = tmp_path / "out" / "nested"
    assert main(["segment", str(path), *prompt, "--model", "tiny", "--out", str(out)]) == 2
    assert re.search(match, _error_line(capsys.readouterr().err))
    assert not (tmp_path / "out").exists()


def test_negative_numbers_parse_as_option_values():
    from segany.cli import _join_negative_values, build_parser

    parser = build_parser()
    argv = [
        "segment",
        "a.png",
        "--point",
        "-10,20",
        "--box",
        "-5,0,20,30",
        "--point",
        "-.5,-1,0",
        "--out",
        "o",
    ]
    args = parser.parse_args(_join_negative_values(parser, argv))
    assert args.point == [[-10.0, 20.0], [-0.5, -1.0, 0.0]] and args.box == [[-5.0, 0.0, 20.0, 30.0]]


def test_bad_checkpoint_error_counts_and_names_a_few_keys(files, tmp_path, capsys):
    from segany.build import DEFAULT_WEIGHTS

    args = [
        "segment",
        str(files["img"]),
        "--point",
        "10,10",
        "--model",
        "tiny",
        "--checkpoint",
        str(DEFAULT_WEIGHTS),
    ]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert len(line) < 1000, len(line)
    assert re.search(r"\d+ missing key\(s\): [^|]+ and \d+ more \| \d+ unexpected key\(s\)", line)
    assert "--debug" in line and not (tmp_path / "o").exists()
    assert main([*args, "--out", str(tmp_path / "o"), "--debug"]) == 2  # every key, and the traceback
    err = capsys.readouterr().err
    missing = int(re.search(r"(\d+) missing key\(s\):\n", err).group(1))  # type: ignore[union-attr]
    assert "Traceback" in err and missing > 5 and err.count("\n  image_encoder.") >= missing


def test_other_commands_report_expected_errors_in_one_line(files, tmp_path, capsys):
    emb_out, onnx_out = tmp_path / "emb", tmp_path / "onnx" / "d.onnx"
    assert (
        main(["embed", str(files["img"]), str(files["trunc"]), "--model", "tiny", "--out", str(emb_out)]) == 2
    )
    assert "truncated" in _error_line(capsys.readouterr().err) and not emb_out.exists()
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "c.safetensors")]) == 2
    assert "nope.pth" in _error_line(capsys.readouterr().err)
    assert main(["convert", str(files["ckpt"]), str(tmp_path / "c.pth")]) == 2
    assert "must end in .safetensors" in _error_line(capsys.readouterr().err)
    bad = ["export-onnx", "--model", "vit_b", "--checkpoint", str(files["ckpt"]), "--out", str(onnx_out)]
    assert main(bad) == 2
    assert "wrong shape" in _error_line(capsys.readouterr().err) and not onnx_out.parent.exists()
    assert (
        main(
            ["segment", str(files["img"]), "--point", "5,5", "--model", "vit_b", "--out", str(tmp_path / "v")]
        )
        == 2
    )
    assert "needs --checkpoint" in _error_line(capsys.readouterr().err)
    from segany.build import DEFAULT_WEIGHTS

    wrong = ["--model", "tiny", "--checkpoint", str(DEFAULT_WEIGHTS), "--no-progress"]
    assert main(["auto", str(files["img"]), "--out", str(tmp_path / "a"), *wrong]) == 2
    assert "missing key(s)" in _error_line(capsys.readouterr().err)
    assert main(["auto", str(files["img"]), "--out", str(tmp_path / "b"), "--points-per-side", "0"]) == 2
    assert "points_per_side" in _error_line(capsys.readouterr().err)


def test_embedding_of_another_image_is_refused_by_segment(files, tmp_path, capsys):
    emb = tmp_path / "e.safetensors"
    base = [
        "segment",
        "--point",
        "10,10",
        "--model",
        "tiny",
        "--checkpoint",
        str(files["ckpt"]),
        "--embedding",
        str(emb),
    ]
    assert main([*base, str(files["img"]), "--out", str(tmp_path / "o1")]) == 0 and emb.exists()
    capsys.readouterr()
    assert main([*base, str(files["img2"]), "--out", str(tmp_path / "o2")]) == 2
    assert "computed for another image" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "o2").exists()
    assert main([*base, str(files["img"]), "--out", str(tmp_path / "o3")]) == 0  # its own image: used


def test_embedding_without_hashes_is_used_with_a_one_line_warning(files, tmp_path, capsys):
    from segany.checkpoint import save_safetensors
    from segany.predictor import ImageEmbedding

    emb = tmp_path / "e.safetensors"
    base = [
        "segment",
        str(files["img"]),
        "--point",
        "10,10",
        "--model",
        "tiny",
        "--checkpoint",
        str(files["ckpt"]),
    ]
    assert main([*base, "--embedding", str(emb), "--out", str(tmp_path / "o1")]) == 0
    e = ImageEmbedding.load(emb)
    meta = {"original_size": "[60, 80]", "input_size": "[192, 256]", "model_fingerprint": e.model_fingerprint}
    save_safetensors(tmp_path / "old.safetensors", {"features": e.features}, metadata=meta)
    capsys.readouterr()
    assert main([*base, "--embedding", str(tmp_path / "old.safetensors"), "--out", str(tmp_path / "o2")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segany: warning: ") and "cannot be checked" in err[0]


def test_console_error_has_no_traceback_and_debug_brings_it_back(files, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", str(files["img"]), "--point", "-10,20", "--model", "tiny", "--out", str(out)]
    code = "import sys; from segany.cli import main; sys.exit(main())"  # what the `segany` script runs
    plain = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and not out.exists()
    line = _error_line(plain.stderr)
    assert "outside the 80×60 image" in line
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "PromptError" in err and err.strip().splitlines()[-1] == line
    assert not out.exists()
