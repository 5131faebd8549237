"""Database schema and engine set-up for the annotation server (SQLite by default, PostgreSQL by URL).

Annotations are human labour, so the defaults favour durability over speed: SQLite runs in WAL mode with
``synchronous=FULL`` (a commit is on disk before it is acknowledged), foreign keys on, a generous busy timeout,
and write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the lock up front instead of
failing half-way with ``database is locked``. PostgreSQL keeps its durable defaults (``fsync=on``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _now() -> float:
    return time.time()


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=_now)


class AuthSession(Base):
    """A login. Only the SHA-256 of the token is stored, so a leaked database does not leak live sessions."""

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    bearer: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    expires_at: Mapped[float] = mapped_column(Float)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=_now)


class Membership(Base):
    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)


class Image(Base):
    """An image of a project. ``rel_path`` is server-generated or found by the server's own directory scan,
    relative to a root chosen by ``storage``; clients only ever name images by ``id``."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "storage", "rel_path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    file_name: Mapped[str] = mapped_column(String(255))  # display only, rendered as text
    storage: Mapped[str] = mapped_column(String(16))  # "dir" (the served IMAGE_DIR) or "upload" (media store)
    rel_path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    mime: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=_now)


class Annotation(Base):
    """One mask. ``version`` implements optimistic concurrency: an update names the version it read."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("image_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    label: Mapped[str] = mapped_column(String(200), default="")
    rle_counts: Mapped[str] = mapped_column(Text)  # COCO compressed RLE string, column-major
    area: Mapped[int] = mapped_column(Integer)
    bbox: Mapped[str] = mapped_column(String(100))  # JSON [x, y, w, h]
    source: Mapped[str] = mapped_column(String(16))  # "person" or "model"
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # time a person (or the model) spent on it
    quality: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-10 rating
    predicted_iou: Mapped[float | None] = mapped_column(Float, nullable=True)
    stability_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompts: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of {x, y, label}
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    updated_at: Mapped[float] = mapped_column(Float, default=_now)


class AnnotationHistory(Base):
    """One row per save, written in the same transaction as the annotation row it describes."""

    __tablename__ = "annotation_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    snapshot: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float, default=_now)


class PrefillRun(Base):
    """Marks an image as pre-filled by the automatic generator, so a repeated request does not add masks twice."""

    __tablename__ = "prefill_runs"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_key: Mapped[str] = mapped_column(String(128))
    n_masks: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float, default=_now)


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` (``sqlite:///path.db`` or ``postgresql://...``) with the durability settings."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError("the annotation database must be a file: sqlite:///path/to/annotations.db")
        engine = create_engine(
            u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take over transaction control from the sqlite3 module so that BEGIN IMMEDIATE can be issued.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"could not switch SQLite to WAL mode (got {mode!r}); is the file on NFS?")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    if backend == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(u, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise ValueError(f"unsupported database URL scheme {u.drivername!r}: use sqlite:/// or postgresql://")


def init_db(engine: Engine) -> None:
    Base.metadata.create_all(engine)


# One lock per SQLite file, shared by every engine on it in this process (see `write_session`).
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _sqlite_writer_lock(engine: Engine) -> threading.RLock | None:
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return None
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(os.path.realpath(engine.url.database), threading.RLock())


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: commits on success, rolls back on any exception (nothing half-applied).

    On SQLite, the writers of this process queue on an in-process lock (one per database file), and only its
    holder issues ``BEGIN IMMEDIATE``. Without it every waiting writer sat in SQLite's busy handler, which
    polls with sleeps of up to 100 ms: under concurrent saves on a loaded machine the file lock was idle about
    three quarters of the time while writers slept, and unlucky ones waited seconds (past a client's timeout,
    given enough load). The in-process lock hands over as soon as the previous writer commits. The pooled
    connection is taken before queueing, so a writer never holds the queue while it waits for the pool. Other
    processes (a second server, `segany engine retrain`) still meet at the file lock and its busy timeout; a
    writer that gets no turn within that timeout raises `sqlalchemy.exc.TimeoutError` (the server answers
    503, as for a full connection pool).
    """
    lock = _sqlite_writer_lock(engine)
    if lock is None:
        with Session(engine.execution_options(write=True), expire_on_commit=False) as s, s.begin():
            yield s
        return
    with engine.connect() as conn:
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise PoolTimeout(f"no turn to write to the SQLite database within {SQLITE_BUSY_TIMEOUT_MS} ms")
        try:
            with Session(conn.execution_options(write=True), expire_on_commit=False) as s, s.begin():
                yield s
        finally:
            lock.release()


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s, s.begin():
        yield s


def integrity_ok(engine: Engine) -> bool:
    """``PRAGMA integrity_check`` on SQLite; on PostgreSQL a trivial query (the engine checks its own pages)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        return conn.exec_driver_sql("SELECT 1").scalar() == 1
