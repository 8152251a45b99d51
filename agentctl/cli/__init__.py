"""The `agentctl` command: a thin shell over the same settings and services the server uses."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from agentctl import __version__
from agentctl.cli import chat as chat_commands
from agentctl.cli import config as config_commands
from agentctl.cli import eval as eval_commands
from agentctl.cli import llm as llm_commands
from agentctl.cli import loadtest as loadtest_commands
from agentctl.cli import migrate as migrate_commands
from agentctl.cli import models as models_commands
from agentctl.cli import replay as replay_commands
from agentctl.cli import retention as retention_commands
from agentctl.cli import serve as serve_commands
from agentctl.cli import tools as tools_commands
from agentctl.cli import usage_report as usage_commands
from agentctl.cli import users as users_commands
from agentctl.cli.context import CliState
from agentctl.cli.usage import Context, PlainUsageErrors
from agentctl.config import SettingsError


class _AgentctlGroup(TyperGroup):
    """Turns known failures into one plain line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: Context) -> Any:
        from server.errors import AppError  # imported late: `agentctl --help` stays fast

        try:
            return super().invoke(ctx)
        except SettingsError as error:
            for problem in error.problems:
                typer.echo(f"agentctl: {problem}", err=True)
            raise typer.Exit(2) from None
        except AppError as error:
            typer.echo(f"agentctl: {error.detail}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_AgentctlGroup,
    name="agentctl",
    help="Run an AI agent as a service: serve it, talk to it, load-test it, evaluate it, operate it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(name="serve")(serve_commands.serve)
app.command(name="migrate")(migrate_commands.migrate)
app.command(name="models")(models_commands.models)
app.command(name="tools")(tools_commands.tools)
app.command(name="chat")(chat_commands.chat)
app.command(name="loadtest", cls=loadtest_commands.LoadTestCommand)(loadtest_commands.loadtest)
app.command(name="usage", cls=PlainUsageErrors)(usage_commands.usage)
app.add_typer(config_commands.app, name="config")
app.add_typer(llm_commands.app, name="llm")
eval_commands.app.command("replay")(replay_commands.replay)
app.add_typer(eval_commands.app, name="eval")
app.add_typer(users_commands.app, name="users")
app.add_typer(retention_commands.app, name="retention")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"agentctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    env: Annotated[
        str | None,
        typer.Option("--env", help="Environment: development, staging, production or test (AGENTCTL_ENV)."),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Where local state lives (AGENTCTL_DATA_DIR).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """agentctl: one config, one CLI, for the agent service."""
    ctx.obj = CliState()
    ctx.obj.add_flag("env", env, "--env")
    ctx.obj.add_flag("data_dir", data_dir, "--data-dir")


def main() -> None:
    app()
