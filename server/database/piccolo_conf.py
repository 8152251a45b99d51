"""Piccolo's discovery module.

Piccolo looks its engine and apps up through an importable module (named by PICCOLO_CONF). agentctl
creates its engine from the settings passed to it and binds it here, so that Piccolo's own machinery
(migrations) uses that same engine. Run by Piccolo's CLI on its own, it builds one from the settings.
"""

from __future__ import annotations

from typing import Any

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

APP_REGISTRY = AppRegistry(apps=["server.tables"])  # the registry of every capability's tables

_bound_engine: PostgresEngine | None = None


def bind_engine(engine: PostgresEngine | None) -> None:
    global _bound_engine
    _bound_engine = engine


def __getattr__(name: str) -> Any:
    if name != "DB":
        raise AttributeError(name)
    if _bound_engine is not None:
        return _bound_engine
    # Piccolo's CLI (e.g. `piccolo migrations new agentctl --auto`) needs an engine object but no connection.
    from agentctl.config import load_settings

    url = load_settings().database.url
    return PostgresEngine(config={"dsn": url.get_secret_value() if url else "postgresql:///agentctl"})
