"""Expected errors of the command line: reported as one ``segany: error: ...`` line on stderr, exit status 2.

Besides `CommandError`, the library's own typed errors count as expected: a bad prompt (`PromptError`), an image
that cannot be read (`ImageError`, or a missing file), a checkpoint that does not fit (`CheckpointError`), an
embedding of another image or model (`EmbeddingError`) and a generator option that cannot work
(`GeneratorOptionError`). Anything else is a bug and keeps its traceback; ``segany --debug`` shows the traceback
of expected errors too.
"""

from __future__ import annotations

import sys


class CommandError(ValueError):
    """A wrong command line or input that the user can fix; the message says how."""


# module -> names of its expected error classes. Looked up in `sys.modules` only: an error can only be one of
# these if its module was imported, and classifying it must not import torch.
_EXPECTED: dict[str, tuple[str, ...]] = {
    "segany.predictor": ("PromptError", "EmbeddingError"),
    "segany.images": ("ImageError",),
    "segany.checkpoint": ("CheckpointError",),
    "segany.automatic": ("GeneratorOptionError",),
}


def is_expected(exc: BaseException) -> bool:
    if isinstance(
        exc, CommandError | FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError
    ):
        return True
    for module, names in _EXPECTED.items():
        mod = sys.modules.get(module)
        if mod is not None and isinstance(exc, tuple(getattr(mod, n) for n in names)):
            return True
    return False


def one_line(exc: BaseException) -> str:
    """The error as one line: ``path: reason`` for OS errors, else its message with newlines folded."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__
