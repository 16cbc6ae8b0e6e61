"""Alembic migrations. Each version applies a readable .sql file from migrations/sql/."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, text

from models.session import sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is ConfigParser-based: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


# The rules in force (every function and trigger, every privilege and policy) each have
# one home, re-runnable, applied after the versioned migrations reach head (Flyway's
# "repeatable migrations"): a versioned migration never applies them, because on a fresh
# database it would run today's rules against a schema that later migrations still extend.
RULES = ("functions.sql", "privileges.sql")


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
    if revision == "head":
        apply_rules(database_url)
        grant_connect(database_url)


def apply_rules(database_url: str) -> None:
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as connection:
            driver_connection = connection.connection.driver_connection
            assert driver_connection is not None
            for name in RULES:
                driver_connection.execute((MIGRATIONS_DIR / "sql" / name).read_text())
    finally:
        engine.dispose()


def grant_connect(database_url: str) -> None:
    """Database grants are not part of the database (a copy or a restored dump has none):
    after every upgrade, only this database's own logins may connect to it."""
    engine = create_engine(sqlalchemy_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT fleet_grant_connect()"))
    finally:
        engine.dispose()


def create_database(database_url: str) -> bool:
    """Create the URL's database through the server's maintenance database, unless it
    exists. True if it was created."""
    url = make_url(sqlalchemy_url(database_url))
    maintenance = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with maintenance.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).first()
            if exists:
                return False
            quoted = connection.dialect.identifier_preparer.quote(str(url.database))
            connection.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        maintenance.dispose()


def apply_sql(name: str) -> None:
    """Run one migrations/sql file inside the migration's transaction.

    It goes to psycopg directly: with no parameters psycopg leaves the text alone, so
    plpgsql's % placeholders and := survive (SQLAlchemy's text() would parse them).
    """
    from alembic import op

    driver_connection = op.get_bind().connection.driver_connection
    assert driver_connection is not None
    driver_connection.execute((MIGRATIONS_DIR / "sql" / name).read_text())
