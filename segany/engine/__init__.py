"""Data engine stages 1-2: the annotation server, its database and its browser page (see ``app.create_app``)."""

from segany.engine.app import create_app
from segany.engine.settings import ConfigError, EngineSettings

__all__ = ["ConfigError", "EngineSettings", "create_app"]
