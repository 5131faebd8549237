"""Data engine stages 1-2: the annotation server, its database and its browser page (see ``app.create_app``).

Needs the engine extra (``pip install 'segany[engine]'``); without it, importing this package raises
`segany.extras.MissingExtra`, which says so.
"""

from segany.extras import require as _require

_require("engine", "segany.engine (the annotation server)")

from segany.engine.app import create_app  # noqa: E402
from segany.engine.settings import ConfigError, EngineSettings  # noqa: E402

__all__ = ["ConfigError", "EngineSettings", "create_app"]
