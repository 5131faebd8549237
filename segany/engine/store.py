"""Database operations of the annotation server. Each public function is one transaction.

A save writes the annotation row and its history row together, so no save is ever half-applied. Updates name
the version they read (``UPDATE ... WHERE id = ? AND version = ?``); zero rows updated means someone else saved
first and the caller gets :class:`Conflict` (HTTP 409) instead of silently overwriting their work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pycocotools import mask as mask_utils
from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segany.engine import security
from segany.engine.db import (
    Annotation,
    AnnotationHistory,
    AuthSession,
    Image,
    Membership,
    PrefillRun,
    Project,
    User,
    read_session,
    write_session,
)


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    def __init__(self, current_version: int | None) -> None:
        super().__init__("the annotation was changed by someone else; reload it and apply your change again")
        self.current_version = current_version


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    is_admin: bool
    csrf_token: str
    bearer: bool


# ---- users, sessions, projects -------------------------------------------------------------------------------


def set_user(engine: Engine, username: str, password: str, *, is_admin: bool) -> int:
    """Create the user, or reset its password and role (used for the admin at every start)."""
    pw_hash = security.hash_password(password)
    with write_session(engine) as s:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            user = User(username=username, password_hash=pw_hash, is_admin=is_admin)
            s.add(user)
            s.flush()
        else:
            user.password_hash, user.is_admin = pw_hash, is_admin
        return user.id


def create_user(engine: Engine, username: str, password: str, *, is_admin: bool) -> int:
    with write_session(engine) as s:
        if s.scalar(select(User.id).where(User.username == username)) is not None:
            raise Conflict(None)
        user = User(username=username, password_hash=security.hash_password(password), is_admin=is_admin)
        s.add(user)
        s.flush()
        return user.id


def authenticate(engine: Engine, username: str, password: str) -> User | None:
    with read_session(engine) as s:
        user = s.scalar(select(User).where(User.username == username))
    if user is None:
        security.verify_password(password, _DUMMY_HASH)  # same work either way: no user-name oracle by timing
        return None
    return user if security.verify_password(password, user.password_hash) else None


_DUMMY_HASH = security.hash_password("not-a-real-password")


def new_session(engine: Engine, user_id: int, *, bearer: bool, ttl_s: float) -> tuple[str, str]:
    token, csrf = security.new_token(), security.new_token()
    now = time.time()
    with write_session(engine) as s:
        s.execute(delete(AuthSession).where(AuthSession.expires_at < now))  # expired logins go away here
        s.add(
            AuthSession(
                token_hash=security.token_hash(token),
                user_id=user_id,
                csrf_token=csrf,
                bearer=bearer,
                created_at=now,
                expires_at=now + ttl_s,
            )
        )
    return token, csrf


def principal(engine: Engine, token: str) -> Principal | None:
    with read_session(engine) as s:
        row = s.execute(
            select(AuthSession, User)
            .join(User, User.id == AuthSession.user_id)
            .where(AuthSession.token_hash == security.token_hash(token))
        ).first()
    if row is None or row[0].expires_at < time.time():
        return None
    sess, user = row
    return Principal(user.id, user.username, user.is_admin, sess.csrf_token, sess.bearer)


def end_session(engine: Engine, token: str) -> None:
    with write_session(engine) as s:
        s.execute(delete(AuthSession).where(AuthSession.token_hash == security.token_hash(token)))


def ensure_project(engine: Engine, name: str, member_ids: list[int]) -> int:
    with write_session(engine) as s:
        project = s.scalar(select(Project).where(Project.name == name))
        if project is None:
            project = Project(name=name)
            s.add(project)
            s.flush()
        for uid in member_ids:
            if s.get(Membership, (uid, project.id)) is None:
                s.add(Membership(user_id=uid, project_id=project.id))
        return project.id


def create_project(engine: Engine, name: str, owner_id: int) -> int:
    with write_session(engine) as s:
        if s.scalar(select(Project.id).where(Project.name == name)) is not None:
            raise Conflict(None)
        project = Project(name=name)
        s.add(project)
        s.flush()
        s.add(Membership(user_id=owner_id, project_id=project.id))
        return project.id


def add_member(engine: Engine, project_id: int, username: str) -> None:
    with write_session(engine) as s:
        uid = s.scalar(select(User.id).where(User.username == username))
        if uid is None or s.get(Project, project_id) is None:
            raise NotFound(username)
        if s.get(Membership, (uid, project_id)) is None:
            s.add(Membership(user_id=uid, project_id=project_id))


def _can_access(s: Session, who: Principal, project_id: int) -> bool:
    if who.is_admin:
        return True
    return s.get(Membership, (who.user_id, project_id)) is not None


def projects_for(engine: Engine, who: Principal) -> list[Project]:
    with read_session(engine) as s:
        q = select(Project).order_by(Project.id)
        if not who.is_admin:
            q = q.join(Membership, Membership.project_id == Project.id).where(
                Membership.user_id == who.user_id
            )
        return list(s.scalars(q))


def project_for(engine: Engine, who: Principal, project_id: int) -> Project:
    """The project, or NotFound when it does not exist *or* the caller is not a member (no existence oracle)."""
    with read_session(engine) as s:
        project = s.get(Project, project_id)
        if project is None or not _can_access(s, who, project_id):
            raise NotFound(project_id)
        return project


def image_for(engine: Engine, who: Principal, image_id: int) -> Image:
    with read_session(engine) as s:
        image = s.get(Image, image_id)
        if image is None or not _can_access(s, who, image.project_id):
            raise NotFound(image_id)
        return image


# ---- images --------------------------------------------------------------------------------------------------


def add_image(engine: Engine, project_id: int, **fields: Any) -> tuple[int, bool]:
    """Insert an image row unless the same (storage, rel_path) is already in the project; returns (id, created)."""
    with write_session(engine) as s:
        existing = s.scalar(
            select(Image.id).where(
                Image.project_id == project_id,
                Image.storage == fields["storage"],
                Image.rel_path == fields["rel_path"],
            )
        )
        if existing is not None:
            return existing, False
        image = Image(project_id=project_id, **fields)
        s.add(image)
        s.flush()
        return image.id, True


def known_paths(engine: Engine, project_id: int, storage: str) -> set[str]:
    with read_session(engine) as s:
        return set(
            s.scalars(select(Image.rel_path).where(Image.project_id == project_id, Image.storage == storage))
        )


def list_images(engine: Engine, project_id: int) -> list[tuple[Image, int]]:
    with read_session(engine) as s:
        counts = (
            select(Annotation.image_id, func.count().label("n"))
            .where(Annotation.deleted.is_(False))
            .group_by(Annotation.image_id)
            .subquery()
        )
        rows = s.execute(
            select(Image, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.image_id == Image.id)
            .where(Image.project_id == project_id)
            .order_by(Image.id)
        ).all()
        return [(img, int(n)) for img, n in rows]


def set_done(engine: Engine, image_id: int, done: bool) -> None:
    with write_session(engine) as s:
        s.execute(update(Image).where(Image.id == image_id).values(done=done))


# ---- annotations ---------------------------------------------------------------------------------------------


def compress_rle(counts: list[int], height: int, width: int) -> tuple[str, int, list[float]]:
    """Validate an uncompressed column-major RLE for an HxW image; returns (compressed counts, area, bbox)."""
    if sum(counts) != height * width:
        raise ValueError(f"run lengths sum to {sum(counts)}, expected height*width = {height * width}")
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    area = int(mask_utils.area(rle))
    if area == 0:
        raise ValueError("the mask is empty")
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return rle["counts"].decode("ascii"), area, bbox


def _snapshot(a: Annotation) -> str:
    return json.dumps(
        {
            "version": a.version,
            "label": a.label,
            "rle_counts": a.rle_counts,
            "quality": a.quality,
            "seconds": a.seconds,
            "deleted": a.deleted,
            "source": a.source,
        }  # fmt: skip
    )


def _history(s: Session, a: Annotation, action: str, user_id: int | None) -> None:
    s.add(AnnotationHistory(annotation_id=a.id, version=a.version, action=action, user_id=user_id,
                            snapshot=_snapshot(a)))  # fmt: skip


def create_annotation(
    engine: Engine, image: Image, who_id: int | None, fields: dict[str, Any]
) -> tuple[int, bool]:
    """Insert a mask (and its history row). With an idempotency key a retried create returns the first row."""
    key = fields.get("idempotency_key")
    for _attempt in range(2):
        try:
            with write_session(engine) as s:
                if key is not None:
                    found = s.scalar(
                        select(Annotation.id).where(
                            Annotation.image_id == image.id, Annotation.idempotency_key == key
                        )
                    )
                    if found is not None:
                        return found, False
                a = Annotation(image_id=image.id, version=1, created_by=who_id, **fields)
                s.add(a)
                s.flush()
                _history(s, a, "create", who_id)
                return a.id, True
        except IntegrityError:
            if key is None:
                raise
            # Two retries of the same create raced (PostgreSQL); the loser reads the winner's row.
    raise RuntimeError("idempotent create did not converge")


def update_annotation(engine: Engine, who: Principal, annotation_id: int, version: int,
                      changes: dict[str, Any]) -> int:  # fmt: skip
    """Apply ``changes`` if the stored version is still ``version``; returns the new version."""
    with write_session(engine) as s:
        row = s.execute(
            select(Annotation, Image.project_id)
            .join(Image, Image.id == Annotation.image_id)
            .where(Annotation.id == annotation_id)
        ).first()
        if row is None or not _can_access(s, who, row[1]):
            raise NotFound(annotation_id)
        values = dict(changes, version=Annotation.version + 1, updated_at=time.time())
        result: CursorResult = s.execute(  # type: ignore[assignment]
            update(Annotation)
            .where(Annotation.id == annotation_id, Annotation.version == version)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            current = s.scalar(select(Annotation.version).where(Annotation.id == annotation_id))
            raise Conflict(current)
        a = s.get(Annotation, annotation_id)
        if a is None:  # cannot happen inside this transaction; keeps the types honest
            raise NotFound(annotation_id)
        s.refresh(a)
        action = (
            "delete"
            if changes.get("deleted")
            else ("restore" if changes.get("deleted") is False else "update")
        )
        _history(s, a, action, who.user_id)
        return a.version


def annotations_of(
    engine: Engine, image_id: int, include_deleted: bool = False
) -> list[tuple[Annotation, str | None]]:
    with read_session(engine) as s:
        q = (
            select(Annotation, User.username)
            .outerjoin(User, User.id == Annotation.created_by)
            .where(Annotation.image_id == image_id)
            .order_by(Annotation.id)
        )
        if not include_deleted:
            q = q.where(Annotation.deleted.is_(False))
        return [(a, name) for a, name in s.execute(q).all()]


def annotation_for(engine: Engine, who: Principal, annotation_id: int) -> tuple[Annotation, str | None]:
    with read_session(engine) as s:
        row = s.execute(
            select(Annotation, User.username, Image.project_id)
            .join(Image, Image.id == Annotation.image_id)
            .outerjoin(User, User.id == Annotation.created_by)
            .where(Annotation.id == annotation_id)
        ).first()
        if row is None or not _can_access(s, who, row[2]):
            raise NotFound(annotation_id)
        return row[0], row[1]


def prefill_done(engine: Engine, image_id: int) -> bool:
    with read_session(engine) as s:
        return bool(s.scalar(select(exists().where(PrefillRun.image_id == image_id))))


def save_prefill(
    engine: Engine, image_id: int, model_key: str, masks: list[dict[str, Any]], seconds: float
) -> int:
    """Insert all pre-filled masks and the run marker in one transaction; returns how many were added."""
    with write_session(engine) as s:
        if s.get(PrefillRun, image_id) is not None:
            return 0
        per_mask = seconds / max(len(masks), 1)
        for m in masks:
            a = Annotation(
                image_id=image_id, version=1, created_by=None, source="model", seconds=per_mask, **m
            )
            s.add(a)
            s.flush()
            _history(s, a, "create", None)
        s.add(PrefillRun(image_id=image_id, model_key=model_key, n_masks=len(masks), seconds=seconds))
        return len(masks)


def project_dump(engine: Engine, project_id: int) -> tuple[list[Image], list[tuple[Annotation, str | None]]]:
    """Everything an export needs, read in one transaction (a consistent snapshot)."""
    with read_session(engine) as s:
        images = list(s.scalars(select(Image).where(Image.project_id == project_id).order_by(Image.id)))
        anns = s.execute(
            select(Annotation, User.username)
            .join(Image, Image.id == Annotation.image_id)
            .outerjoin(User, User.id == Annotation.created_by)
            .where(Image.project_id == project_id, Annotation.deleted.is_(False))
            .order_by(Annotation.id)
        ).all()
        return images, [(a, n) for a, n in anns]
