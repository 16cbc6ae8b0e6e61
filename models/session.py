"""Engines and sessions. One engine per (url, process role); application_name names the
process in pg_stat_activity and, through fleet_actor(), in node_history."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Annotated

from pydantic import AfterValidator
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker


def sqlalchemy_url(database_url: str) -> str:
    """Accept plain postgresql:// URLs (as psql and apps write them) and use psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url.removeprefix(prefix)
    return database_url


def check_database_url(database_url: str) -> str:
    """A PostgreSQL URL the engine can use, checked when the settings are read so that a
    typo is one line about the setting. The messages never echo the URL: it may hold a
    password."""
    try:
        url = make_url(sqlalchemy_url(database_url))
    except (ArgumentError, ValueError):
        raise ValueError(
            "not a database URL (postgresql://user[:password]@host[:port]/database)"
        ) from None
    if url.drivername != "postgresql+psycopg":
        raise ValueError(f"{url.drivername}:// is not supported: the fleet needs postgresql://")
    return database_url


DatabaseUrl = Annotated[str, AfterValidator(check_database_url)]


@cache
def engine_for(database_url: str, actor: str) -> Engine:
    return create_engine(
        sqlalchemy_url(database_url),
        pool_pre_ping=True,
        connect_args={"application_name": actor[:63]},
    )


@cache
def statement_engine_for(database_url: str, actor: str) -> Engine:
    """For the worker's hot path, where every query is one self-contained statement
    (UPDATE ... RETURNING): autocommit makes each a single round trip instead of
    BEGIN, statement, COMMIT, and no ping precedes it. A dead connection fails that one
    statement; the job fails and the dispatcher queues the step again."""
    return create_engine(
        sqlalchemy_url(database_url),
        isolation_level="AUTOCOMMIT",
        connect_args={"application_name": actor[:63]},
    )


@cache
def _session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on leaving the block, or rolls back on an error."""
    with _session_factory(engine).begin() as session:
        yield session
