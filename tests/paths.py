"""Where the tests find the read-only shared data: $SEGANY_SHARED, else ../shared beside the checkout, else
/work/shared (a clone made elsewhere on the same machine)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    candidates = [os.environ.get("SEGANY_SHARED"), REPO.parent / "shared", Path("/work/shared")]
    for c in candidates:
        if c and (Path(c) / "data").is_dir():
            return Path(c)
    return REPO.parent / "shared"


SHARED = _find_shared()
DATA = Path(os.environ.get("SEGANY_DATA", SHARED / "data"))
# the official checkpoints' key/shape lists, vendored from shared/reference so these tests never skip
REFERENCE = Path(__file__).resolve().parent / "reference"
