"""`agentctl chat`: talk to the agent from a terminal, or ask it one question from a script."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agentctl.cli.context import settings_of

if TYPE_CHECKING:
    from agentctl.config import Settings

# Addresses a server listens on that a client cannot connect to as such.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def chat(
    ctx: typer.Context,
    message: Annotated[
        str | None,
        typer.Option(
            "--message", "-m", help="Send this one message, print the answer and exit (a message piped on stdin too)."
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="URL",
            help="The agentctl server; default: the local one of the settings (AGENTCTL_SERVER__HOST, __PORT).",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="With a message: print the answer, tool calls and usage as one JSON object.")
    ] = False,
    new: Annotated[bool, typer.Option("--new", help="Start a new session instead of continuing the last one.")] = False,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Continue this session: its id, an id prefix or its name.")
    ] = None,
    usage: Annotated[bool, typer.Option("--usage", help="Show tokens, cost and latency after each answer.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            metavar="KEY",
            help="Act with this API key (chat scope) instead of signing in: no prompt, for scripts and CI. Default: "
            "AGENTCTL_API_KEY.",
        ),
    ] = None,
    logout: Annotated[
        bool, typer.Option("--logout", help="Sign out: revoke the tokens on the server and forget them here.")
    ] = False,
) -> None:
    """Chat with the agent: streamed answers, sessions and memory. Signs in, or up, at the first use."""
    from rich.console import Console

    from agentctl.terminal.client import ChatClient, ChatError, TokenStore
    from agentctl.terminal.ui import ChatRepl, ask_once, sign_in

    if new and session:
        raise typer.BadParameter("--new starts a session, --session continues one: give one of them")
    settings = settings_of(ctx)
    url = _checked_url(server) if server else default_server_url(settings)
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if key is not None and logout:
        raise typer.BadParameter("an API key is not a sign-in: revoke it instead", param_hint="--logout")
    text = message if message is not None or logout or sys.stdin.isatty() else sys.stdin.read()
    if text is not None and not text.strip():
        raise typer.BadParameter("the message is empty", param_hint="--message / stdin")
    if json_output and text is None and not logout:
        raise typer.BadParameter("--json needs a message: -m TEXT, or one piped on stdin", param_hint="--json")

    config_dir = Path(typer.get_app_dir("agentctl"))
    # soft_wrap: a message to stderr is one line, however long, even when rich cannot tell the width.
    console, err_console = Console(), Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        with ChatClient(url, TokenStore(config_dir), api_key=key) as client:
            if logout:
                problem = client.logout()
                typer.echo(
                    f"signed out of {url}" + (f" here only; the server was not told ({problem})" if problem else "")
                )
                return
            if not client.signed_in:
                client.ensure_reachable()
                if not sys.stdin.isatty():
                    raise ChatError(f"not signed in to {url}: run `agentctl chat` in a terminal once to sign in")
                sign_in(client, console)
            client.open_session(choice=session, new=new)
            if text is None:
                ChatRepl(client, console, show_usage=usage, history_path=config_dir / "chat_history").run()
                return
            status = ask_once(
                client, text, console=console, err_console=err_console, json_output=json_output, show_usage=usage
            )
    except ChatError as error:
        if json_output:
            typer.echo(json.dumps({"error": {"type": error.code, "detail": error.message}}, ensure_ascii=False))
        typer.echo(f"agentctl: {error.message}", err=True)
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, EOFError):  # Ctrl-C or Ctrl-D at a prompt (signing in): leave without a traceback
        typer.echo("", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(status)


def default_server_url(settings: Settings) -> str:
    """Where the local `agentctl serve` listens, as a client reaches it."""
    host = _ANY_ADDRESS.get(settings.server.host, settings.server.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.server.port}"


def _checked_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        raise typer.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="--server")
    return url.rstrip("/")
