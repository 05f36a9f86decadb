"""Alembic environment of the example application, RAG Memory.

Three ways in, in this order: a connection handed over in ``config.attributes["connection"]``
(how runbook drives the migrations in-process: the caller owns the connection and its transaction,
so nothing here commits or closes it); offline mode (``--sql``), which needs no database at all;
otherwise an engine built from ``sqlalchemy.url`` or the ``RAG_DATABASE_URL`` environment variable.
``transaction_per_migration`` and ``on_version_apply`` may be passed in ``config.attributes`` too.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import URL, Connection, Engine, engine_from_config, make_url, pool

config = context.config

# A caller that hands over its own connection also owns logging; the CLI gets alembic.ini's.
if config.config_file_name and config.attributes.get(
    "configure_logger", "connection" not in config.attributes
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {
        "target_metadata": target_metadata,
        "transaction_per_migration": bool(config.attributes.get("transaction_per_migration", False)),
    }
    if config.attributes.get("on_version_apply") is not None:
        options["on_version_apply"] = config.attributes["on_version_apply"]
    return options


def _url() -> str | None:
    return config.get_main_option("sqlalchemy.url") or os.environ.get("RAG_DATABASE_URL") or None


def run_migrations_offline() -> None:
    """Render the SQL without a database: a URL is only used for its dialect."""
    context.configure(
        url=_url() or "postgresql://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    context.configure(connection=connection, **_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the handed-over connection, or an engine of our own."""
    connectable = config.attributes.get("connection")
    if isinstance(connectable, Connection):
        _run_on(connectable)
        return
    if isinstance(connectable, Engine):
        with connectable.connect() as connection:
            _run_on(connection)
            connection.commit()
        return
    url = _url()
    if not url:
        raise RuntimeError(
            "no database to migrate: set RAG_DATABASE_URL or sqlalchemy.url in alembic.ini"
        )
    driver_url: URL = make_url(url)
    if driver_url.drivername == "postgresql":  # psycopg 3 is what is installed, not psycopg2
        driver_url = driver_url.set(drivername="postgresql+psycopg")
    section: dict[str, Any] = dict(config.get_section(config.config_ini_section, {}))
    section["sqlalchemy.url"] = driver_url
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
