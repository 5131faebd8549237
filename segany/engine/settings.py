"""Operator settings of the annotation server, resolved and checked once before anything starts."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from segany.engine.model import ModelSpec
from segany.engine.security import MIN_PASSWORD_LEN

PASSWORD_ENV = "SEGANY_ADMIN_PASSWORD"


class ConfigError(ValueError):
    """The server refuses to start with these settings."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class EngineSettings:
    image_dir: Path
    data_dir: Path
    db_url: str
    admin_password: str | None
    admin_user: str = "admin"
    host: str = "127.0.0.1"
    dev_mode: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    max_upload_bytes: int = 25 * 2**20
    max_json_bytes: int = 16 * 2**20
    max_pixels: int = 50_000_000
    session_ttl_s: float = 12 * 3600.0
    prefill_points_per_side: int = 16
    # Stage 2 pre-fills only masks the generator is confident about. None: the model's own recommended filters
    # (its checkpoint's `generator_defaults`, chosen on its validation split), else the official 0.88 / 0.95.
    prefill_iou_thresh: float | None = None
    prefill_stability_thresh: float | None = None
    project_name: str | None = None  # defaults to the image folder's name
    # Embeddings computed in the background ahead of the annotator: the next N images of the project.
    prefetch_ahead: int = 3
    generated_password: bool = False

    def check(self) -> EngineSettings:
        """Apply the no-default-secret rule; returns self (with a random password in dev mode if none was given).

        Outside dev mode an admin password of at least 12 characters is required. Dev mode is local-only: it
        refuses any address but loopback, and without a password it makes a random one for this run.
        """
        if self.dev_mode and not is_loopback(self.host):
            raise ConfigError(f"--dev is local-only: it binds 127.0.0.1, not {self.host!r}")
        if not self.admin_password:
            if not self.dev_mode:
                raise ConfigError(
                    f"no admin password: set {PASSWORD_ENV} (at least {MIN_PASSWORD_LEN} characters), "
                    "or use --dev for a local-only session with a random one"
                )
            self.admin_password = secrets.token_urlsafe(12)
            self.generated_password = True
        elif len(self.admin_password) < MIN_PASSWORD_LEN and not self.dev_mode:
            raise ConfigError(f"{PASSWORD_ENV} must have at least {MIN_PASSWORD_LEN} characters")
        if self.max_upload_bytes <= 0 or self.max_pixels <= 0:
            raise ConfigError("upload caps must be positive")
        if self.prefetch_ahead < 0:
            raise ConfigError("prefetch_ahead must be 0 or more")
        return self
