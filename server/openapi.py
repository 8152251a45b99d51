"""The OpenAPI document, kept true to what the server does, so that generated clients and fuzzers can rely on it.

Litestar documents a msgspec Struct's fields but not that unknown ones are refused (``forbid_unknown_fields``), and
its automatic OPTIONS answer of a path whose handlers a Controller registered one by one names only the methods of
the first handler (a 405 on the same path names them all). Both are put right here.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import Schema
from litestar.routes import HTTPRoute

from agentctl.config import Settings
from server.auth.passwords import password_policy_pattern
from server.security.text import VISIBLE_CHARACTER, email_pattern


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Struct schemas that say ``additionalProperties: false`` when the Struct refuses unknown fields."""

    def to_openapi_schema(self, field_definition: Any, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


def answer_options_for_every_method(app: Litestar) -> None:
    """Point each path's automatic OPTIONS handler at the path's final route, so that its ``Allow`` header lists
    every method of the path (the handler reads the methods of the route object it was created with)."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            function = handler.fn
            if handler.handler_name == "options_handler" and getattr(function, "__code__", None) is not None:
                for name, cell in zip(function.__code__.co_freevars, function.__closure__ or (), strict=True):
                    if name == "self" and isinstance(cell.cell_contents, HTTPRoute):
                        cell.cell_contents = route


def state_the_configured_limits(app: Litestar, settings: Settings) -> None:
    """The schemas say what this server's settings accept: the password policy, the longest message."""
    password = _property(app, "RegisterRequest", "password")
    if password is not None:
        _state_the_password_policy(password, settings)
    for component in ("ClientMessage", "EditRequest"):
        content = _property(app, component, "content")
        if content is not None:
            content.max_length = settings.agent.message_max_chars
            content.pattern = VISIBLE_CHARACTER
    for component in ("RegisterRequest", "LoginRequest"):
        email = _property(app, component, "email")
        if email is not None:
            email.pattern = email_pattern()


def state_the_zero_bounds(app: Litestar) -> None:
    """Bounds of zero that Litestar leaves out of the document (it drops a falsy ``ge``, ``gt`` or ``max_length``
    from msgspec's constraints): a key's lifetime above zero, temperatures from zero, no client tools, and a
    Responses input list that is not empty."""
    lifetime = _property(app, "ApiKeyCreate", "expires_in_days")
    if lifetime is not None:
        lifetime.exclusive_minimum = 0
    for component in ("ChatCompletionRequest", "ResponseRequest"):
        temperature = _property(app, component, "temperature")
        if temperature is not None:
            temperature.minimum = 0
        for name in ("tools", "functions"):
            tools = _property(app, component, name)
            for variant in (tools.one_of or []) if tools is not None else []:
                if isinstance(variant, Schema) and variant.items is not None:
                    variant.max_items = 0
    given = _property(app, "ResponseRequest", "input")
    for variant in (given.one_of or []) if given is not None else []:
        if isinstance(variant, Schema) and variant.items is not None:
            variant.min_items = 1


def _property(app: Litestar, component: str, name: str) -> Schema | None:
    components = app.openapi_schema.components
    schema = (components.schemas or {}).get(component) if components else None
    found = (schema.properties or {}).get(name) if isinstance(schema, Schema) else None
    return found if isinstance(found, Schema) else None


def _state_the_password_policy(password: Schema, settings: Settings) -> None:
    auth = settings.auth
    password.min_length = max(password.min_length or 0, auth.password_min_length)
    password.max_length = min(password.max_length or auth.password_max_length, auth.password_max_length)
    password.pattern = password_policy_pattern(auth)
    password.description = (
        f"Any Unicode text, stored only as a hash: {auth.password_min_length} to {auth.password_max_length} "
        "characters" + ("" if password.pattern is None else ", with a letter and a digit as configured")
    )
