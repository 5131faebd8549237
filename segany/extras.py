"""The optional parts of segany and the extra that installs each: ``pip install 'segany[EXTRA]'``.

``pip install segany`` installs the core: the model, the predictor and what ``segany segment``, ``segany
embed`` and ``segany convert`` need (PyTorch, NumPy, Pillow, OpenCV, SciPy, PyMaxflow, safetensors, tqdm).
Each other stack is an extra, so that nobody installs a web server, Ray or a plotting library to segment an
image:

========  ==========================================================================================
auto      the automatic mask generator (``SamAutomaticMaskGenerator``, ``segany auto``): torchvision's NMS
ray       ``segany auto --engine ray`` on several machines (includes auto)
onnx      ``segany export-onnx`` (ONNX export and onnxruntime checks, int8 quantisation)
engine    ``segany annotate`` / ``segany.engine``: the annotation server (includes auto and onnx)
train     ``segany train`` (config files, loss plots, COCO-style data)
eval      ``segany eval`` (COCO evaluation, edge benchmark, plots; includes auto)
all       every extra above
========  ==========================================================================================

`EXTRAS` lists the distributions each extra installs, as in ``pyproject.toml`` (a test keeps the two equal).
"""

from __future__ import annotations

import importlib.metadata

_AUTO = ("torchvision", "pycocotools")
_ONNX = ("onnx", "onnxruntime")

EXTRAS: dict[str, tuple[str, ...]] = {
    "auto": _AUTO,
    "ray": ("ray", *_AUTO),
    "onnx": _ONNX,
    "engine": ("fastapi", "uvicorn", "python-multipart", "sqlalchemy", "psycopg", *_AUTO, *_ONNX),
    "train": ("pyyaml", "matplotlib", "pycocotools"),
    "eval": ("matplotlib", "scikit-image", "pycocotools", "torchvision"),
}


class MissingExtra(ModuleNotFoundError):
    """A part of segany was used without the extra that installs what it needs; the message names the extra."""

    def __init__(self, what: str, extra: str, missing: list[str]) -> None:
        super().__init__(
            f"{what} needs the {extra} extra: pip install 'segany[{extra}]' (not installed: {', '.join(missing)})"
        )
        self.what, self.extra, self.missing = what, extra, missing


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` that are not installed (empty when the extra is complete)."""
    return [d for d in EXTRAS[extra] if not _installed(d)]


def require(extra: str, what: str) -> None:
    """Raise `MissingExtra` unless everything ``extra`` installs is there; ``what`` names the user of it."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(what, extra, gone)
