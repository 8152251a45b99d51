"""Admission control's refusals, said before a request's body is read or anything else is done for it: a refused
request must cost the worker next to nothing, or under overload the refusals themselves become the load (measured:
1,500 users retrying sign-ups kept both cores busy answering 503s)."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from server.resources import resources_of


def refuse_sign_ins_when_hashing_is_backlogged(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    resources_of(connection.app.state).auth.refuse_if_hashing_backlogged()


def refuse_turns_when_saturated(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    resources_of(connection.app.state).chat.refuse_if_saturated()
