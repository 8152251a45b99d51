"""What every API schema shares."""

from __future__ import annotations

import msgspec


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every request body: a field we do not know is an error, not something to ignore (and the OpenAPI
    document says so: server.openapi)."""
