"""A command that needs an optional part of segany says which extra to install (see `segany.extras`)."""

from __future__ import annotations

import sys


def require(command: str, *extras: str) -> None:
    """End ``segany COMMAND`` with one error line and status 2 unless every extra in ``extras`` is installed.

    E.g. ``segany: error: segany annotate needs the engine extra: pip install 'segany[engine]' (not installed:
    fastapi)`` instead of a traceback ending in ``ModuleNotFoundError: No module named 'fastapi'``.
    """
    from segany.extras import MissingExtra
    from segany.extras import require as require_extra

    for extra in extras:
        try:
            require_extra(extra, f"segany {command}")
        except MissingExtra as err:
            print(f"segany: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
