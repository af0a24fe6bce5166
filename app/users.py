"""Users: named people with tokens of their own, their browser sessions, and the one rule for who
may change a job (`authorize`).

TRAINBOARD_TOKEN acts as the built-in user `admin`. `trainboard user add NAME [--admin]` adds
others, each with a random token that is printed once and stored only as its SHA-256 digest.
Everyone signed in sees every job; a job's owner or an admin may change it. Without
TRAINBOARD_TOKEN and without users nobody signs in, and every request acts as admin (a laptop).
"""

import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Column, DateTime, Engine, Index, delete, select, update
from sqlmodel import Field as ColumnField
from sqlmodel import SQLModel, col

from app.db import get_engine, migrate, session_scope
from app.models import ADMIN_NAME, Job, Sweep, SweepSummary, UserName, as_utc, utcnow
from app.settings import Settings

MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT_CHARACTERS = 10


# A user as stored: the digest of their token, never the token.
class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_token_digest", "token_digest", unique=True),)

    name: str = ColumnField(primary_key=True, max_length=64)
    token_digest: str = ColumnField(max_length=64)
    is_admin: bool = ColumnField(default=False)
    created_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = ColumnField(default=None, sa_column=Column(DateTime(timezone=True)))


# A browser session, by the digest of its id (the id itself lives only in the cookie). Logging out
# deletes it, so the cookie stops working at once.
class UserSession(SQLModel, table=True):
    __tablename__ = "user_sessions"

    id_digest: str = ColumnField(primary_key=True, max_length=64)
    user_name: str = ColumnField(max_length=64, index=True)
    created_at: datetime = ColumnField(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = ColumnField(sa_column=Column(DateTime(timezone=True), nullable=False))


@dataclass(frozen=True)
class Caller:
    """Who a request acts as. `credential` is the digest of the token they signed in with: it keys
    their session cookies, so a new token ends their sessions."""

    name: str
    is_admin: bool
    credential: str = field(default="", repr=False)


# Every request when no token and no user is configured: a laptop on localhost.
LOCAL_ADMIN = Caller(ADMIN_NAME, True)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_weakness(token: str) -> str | None:
    """Why a token is too weak to guard a dashboard others can reach, or None."""
    problems = []
    if len(token) < MIN_TOKEN_LENGTH:
        problems.append(f"has fewer than {MIN_TOKEN_LENGTH} characters")
    if any(character.isspace() for character in token):
        problems.append("contains whitespace")
    if len(set(token)) < MIN_TOKEN_DISTINCT_CHARACTERS:
        problems.append(f"has fewer than {MIN_TOKEN_DISTINCT_CHARACTERS} different characters")
    return " and ".join(problems) or None


# ---------------------------------------------------------------------------------------------
# Signing in: bearer tokens, the login form, sessions
# ---------------------------------------------------------------------------------------------


def _active():
    return col(User.revoked_at).is_(None)


def sign_in_required(engine: Engine, settings: Settings) -> bool:
    """True once TRAINBOARD_TOKEN is set or any user exists."""
    if settings.token_value:
        return True
    with session_scope(engine) as session:
        return session.scalar(select(User.name).where(_active()).limit(1)) is not None


def _admin(settings: Settings) -> Caller:
    return Caller(ADMIN_NAME, True, digest(settings.token_value or ""))


def _caller(user: User) -> Caller:
    return Caller(user.name, user.is_admin, user.token_digest)


def authenticate(engine: Engine, settings: Settings, token: str) -> Caller | None:
    """The user a token belongs to, or None."""
    admin_token = settings.token_value
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return _admin(settings)
    # Found by its digest: what the lookup's timing could reveal concerns the digest, which says
    # nothing about a token not yet guessed. Tokens are random, so no salt is needed.
    with session_scope(engine) as session:
        user = session.scalar(select(User).where((User.token_digest == digest(token)) & _active()))
    return _caller(user) if user is not None else None


def record_session(engine: Engine, session_id: str, caller: Caller, expires_at: datetime) -> None:
    """Remember a new session (and forget the expired ones)."""
    with session_scope(engine) as session:
        session.execute(delete(UserSession).where(UserSession.expires_at < utcnow()))
        session.add(UserSession(id_digest=digest(session_id), user_name=caller.name, expires_at=expires_at))
        session.commit()


def session_caller(engine: Engine, settings: Settings, session_id: str) -> Caller | None:
    """Who a live session belongs to, or None once it ended, expired, or its user was revoked."""
    with session_scope(engine) as session:
        row = session.get(UserSession, digest(session_id))
        if row is None or as_utc(row.expires_at) <= utcnow():
            return None
        if row.user_name == ADMIN_NAME:
            return _admin(settings) if settings.token_value else None
        user = session.scalar(select(User).where((User.name == row.user_name) & _active()))
    return _caller(user) if user is not None else None


def end_session(engine: Engine, session_id: str) -> None:
    with session_scope(engine) as session:
        session.execute(delete(UserSession).where(UserSession.id_digest == digest(session_id)))
        session.commit()


# ---------------------------------------------------------------------------------------------
# Who may change a job
# ---------------------------------------------------------------------------------------------


class NotAllowed(PermissionError):
    def __init__(self, job_id: int, owner: str, action: str, what: str = "job"):
        super().__init__(f"{what} {job_id} belongs to {owner}; only {owner} or an admin can {action} it")


def may_change(caller: Caller, job: Job | Sweep | SweepSummary) -> bool:
    return caller.is_admin or job.owner == caller.name


def authorize(caller: Caller, job: Job | Sweep, action: str) -> None:
    """The rule for every write to a job or a sweep (cancel, retry, and any added later): its owner
    or an admin. Raises NotAllowed (403) naming the owner otherwise."""
    if not may_change(caller, job):
        raise NotAllowed(job.id, job.owner, action, "sweep" if isinstance(job, Sweep) else "job")


# ---------------------------------------------------------------------------------------------
# Managing users: `trainboard user add | list | revoke | rotate`, on the database directly
# ---------------------------------------------------------------------------------------------


class UserError(ValueError):
    """A user command that cannot be done; the message says why."""


_user_name = TypeAdapter(UserName)


def add(engine: Engine, name: str, *, admin: bool = False) -> str:
    """Create a user; returns their token, which is stored only as its digest."""
    try:
        _user_name.validate_python(name)
    except ValidationError:
        raise UserError(
            f"{name!r} is not a user name: 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        ) from None
    if name == ADMIN_NAME:
        raise UserError(f"{ADMIN_NAME!r} is TRAINBOARD_TOKEN's user; add admins under their own names with --admin")
    token = new_token()
    with session_scope(engine) as session:
        if session.get(User, name) is not None:
            raise UserError(f"user {name} exists; `trainboard user rotate {name}` gives them a new token")
        session.add(User(name=name, token_digest=digest(token), is_admin=admin))
        session.commit()
    return token


def rotate(engine: Engine, name: str) -> str:
    """A new token for a user (a revoked one is reinstated); their old token and sessions end."""
    token = new_token()
    with session_scope(engine) as session:
        changed = session.execute(
            update(User).where(User.name == name).values(token_digest=digest(token), revoked_at=None)
        ).rowcount
        session.execute(delete(UserSession).where(UserSession.user_name == name))
        session.commit()
    if not changed:
        raise UserError(f"no user named {name}")
    return token


def revoke(engine: Engine, name: str) -> None:
    """The user's token and sessions stop working; their jobs stay theirs."""
    with session_scope(engine) as session:
        changed = session.execute(update(User).where(User.name == name).values(revoked_at=utcnow())).rowcount
        session.execute(delete(UserSession).where(UserSession.user_name == name))
        session.commit()
    if not changed:
        raise UserError(f"no user named {name}")


def list_users(engine: Engine) -> list[User]:
    with session_scope(engine) as session:
        return list(session.scalars(select(User).order_by(User.name)))


def run(args, settings: Settings, out: TextIO = sys.stdout) -> int:
    """`trainboard user ...` with the app's settings; exit code 2 when the command is refused."""
    engine = get_engine(settings.database_url)
    migrate(engine)
    try:
        if args.action in ("add", "rotate"):
            token = add(engine, args.name, admin=args.admin) if args.action == "add" else rotate(engine, args.name)
            print(f"{args.name}'s token (shown once; they log in with it or send Authorization: Bearer <token>):", file=out)
            print(token, file=out)
        elif args.action == "revoke":
            revoke(engine, args.name)
            print(f"{args.name} revoked: their token and sessions no longer work", file=out)
        else:
            if settings.token_value:
                print(f"{ADMIN_NAME}\tadmin\tTRAINBOARD_TOKEN", file=out)
            for user in list_users(engine):
                state = f"revoked {as_utc(user.revoked_at):%Y-%m-%d}" if user.revoked_at else "active"
                role = "admin" if user.is_admin else "user"
                print(f"{user.name}\t{role}\t{state}\tadded {as_utc(user.created_at):%Y-%m-%d}", file=out)
    except UserError as exc:
        print(f"trainboard: {exc}", file=sys.stderr)
        return 2
    return 0
