"""Usage errors (an unknown option, a bad value) as one plain line and exit 2, like every configuration problem.

Typer 0.29 vendors click as ``typer._click`` and re-exports neither its Context base nor UsageError; the
overridden methods must name them to keep their supertypes' signatures.
"""

from __future__ import annotations

from typing import Any

import typer
from typer._click.core import Context
from typer._click.exceptions import UsageError
from typer.core import TyperCommand

__all__ = ["Context", "PlainUsageErrors"]


class PlainUsageErrors(TyperCommand):
    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as error:
            typer.echo(f"agentctl: {error.format_message()}", err=True)
            raise typer.Exit(2) from None
