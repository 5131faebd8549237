"""Packaging: a small core plus extras per stack. A command that needs a missing extra says which one to install;
the core (`segany segment`) runs with none of them; `segany.extras` and pyproject.toml list the same packages."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from paths import REPO

from segany import extras
from segany.cli import main

# What no extra installs, per extra: the import names that must not be needed by the core.
NOT_CORE = ["torchvision", "pycocotools", "ray", "onnx", "onnxruntime", "fastapi", "uvicorn", "starlette",
            "sqlalchemy", "psycopg", "multipart", "python_multipart", "yaml", "matplotlib", "skimage"]  # fmt: skip


def _pretend_missing(monkeypatch: pytest.MonkeyPatch, *distributions: str) -> None:
    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda d: d not in distributions and real(d))


@pytest.mark.parametrize(
    ("argv", "command", "extra", "gone"),
    [
        (["annotate", "imgs"], "annotate", "engine", "fastapi"),
        (["auto", "imgs", "--out", "o"], "auto", "auto", "torchvision"),
        (["auto", "imgs", "--out", "o", "--engine", "ray"], "auto --engine ray", "ray", "ray"),
        (["export-onnx", "--out", "d.onnx"], "export-onnx", "onnx", "onnxruntime"),
        (["train", "cfg.yaml"], "train", "train", "pyyaml"),
        (["eval", "edges", "--data", "d", "--out", "o"], "eval", "eval", "scikit-image"),
        (["engine", "retrain", "imgs", "--out", "o"], "engine retrain", "engine", "sqlalchemy"),
        (["engine", "retrain", "imgs", "--out", "o"], "engine retrain", "train", "matplotlib"),
    ],
)
def test_a_command_names_the_extra_it_needs(
    argv: list[str],
    command: str,
    extra: str,
    gone: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    _pretend_missing(monkeypatch, gone)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"segany: error: segany {command} needs the {extra} extra: pip install 'segany[{extra}]' "
        f"(not installed: {gone})"
    )


def test_annotate_without_fastapi_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The issue's example, word for word."""
    _pretend_missing(monkeypatch, "fastapi", "uvicorn")
    with pytest.raises(SystemExit):
        main(["annotate", "photos"])
    assert capsys.readouterr().err.startswith(
        "segany: error: segany annotate needs the engine extra: pip install 'segany[engine]' "
        "(not installed: fastapi, uvicorn)"
    )


def test_library_entry_points_name_their_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from segany.masks import nms

    monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # as if torchvision were not installed
    with pytest.raises(extras.MissingExtra, match=r"pip install 'segany\[auto\]'"):
        nms(torch.zeros(1, 4), torch.ones(1), 0.5)
    _pretend_missing(monkeypatch, "fastapi")
    with pytest.raises(ModuleNotFoundError, match=r"segany\.engine .* needs the engine extra"):
        extras.require("engine", "segany.engine (the annotation server)")


def test_core_runs_without_any_extra(tmp_path: Path) -> None:
    """`segany segment` (with the graph cut) and `--help` work with every non-core package unimportable, so
    `pip install segany` (and `make demo`, which installs only the core, on a torch without torchvision) works."""
    code = (
        "import sys\n"
        f"for name in {NOT_CORE!r}:\n"
        "    sys.modules[name] = None  # import fails, as if not installed\n"
        "import contextlib, io\n"
        "from segany.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['annotate', '--help'])\n"
        "rc = main(['segment', sys.argv[1], '--point', '160,185', '--model', 'tiny', '--refine', 'on',\n"
        "           '--out', sys.argv[2]])\n"
        "print('rc', rc, sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{NOT_CORE!r} and sys.modules[m] is not None))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "examples/dog_cat.jpg"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "rc 0 []", out.stdout
    assert (tmp_path / "out/masks.json").is_file() and (tmp_path / "out/overlay.png").is_file()


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_extras_table_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        out: set[str] = set()
        for req in declared[extra]:
            if req.startswith("segany["):
                for sub in req[len("segany[") : req.index("]")].split(","):
                    out |= expand(sub.strip())
            else:
                out.add(_distribution(req))
        return out

    for extra, dists in extras.EXTRAS.items():
        assert expand(extra) == {d.lower() for d in dists}, extra
    assert expand("all") == set().union(*(expand(e) for e in extras.EXTRAS))
    assert expand("all") <= expand("dev")
    # The core stays small: no web server, Ray, ONNX, plotting or torchvision.
    core = {_distribution(r) for r in project["dependencies"]}
    assert core.isdisjoint(expand("all")), core & expand("all")
    assert not any("==" in r for r in project["dependencies"]), "the core must not pin exact versions"
