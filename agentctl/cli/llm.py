"""`agentctl llm`: model tooling. `simulate` serves the project's own OpenAI-compatible stand-in model."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from agentctl.cli.usage import PlainUsageErrors

app = typer.Typer(help="Model tooling: a simulated OpenAI-compatible model for tests and demos.", no_args_is_help=True)


@app.command("simulate", cls=PlainUsageErrors)
def simulate(
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port; 0 picks a free one.")] = 8100,
    ttft_ms: Annotated[
        float | None, typer.Option("--ttft-ms", min=0.0, help="Time to first token, ms.", show_default="0")
    ] = None,
    tokens_per_second: Annotated[
        float | None,
        typer.Option(
            "--tokens-per-second", min=0.0, help="Streaming pace; 0 sends every token at once.", show_default="0"
        ),
    ] = None,
    answer_tokens: Annotated[
        int | None, typer.Option("--answer-tokens", min=1, help="Length of the generated answer.", show_default="24")
    ] = None,
    embedding_dims: Annotated[
        int | None, typer.Option("--embedding-dims", min=1, max=65536, help="Embedding size.", show_default="384")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the fault draws.", show_default="0")] = None,
    fail_429: Annotated[
        float | None,
        typer.Option("--fail-429", min=0.0, max=1.0, help="Share of requests answered 429.", show_default="0"),
    ] = None,
    fail_500: Annotated[
        float | None, typer.Option("--fail-500", min=0.0, max=1.0, help="Share answered 500.", show_default="0")
    ] = None,
    fail_timeout: Annotated[
        float | None,
        typer.Option("--fail-timeout", min=0.0, max=1.0, help="Share held unanswered, then hung up.", show_default="0"),
    ] = None,
    fail_malformed: Annotated[
        float | None,
        typer.Option(
            "--fail-malformed", min=0.0, max=1.0, help="Share answered 200 with a broken body.", show_default="0"
        ),
    ] = None,
    fail_stream_cut: Annotated[
        float | None,
        typer.Option("--fail-stream-cut", min=0.0, max=1.0, help="Share cut off mid-answer.", show_default="0"),
    ] = None,
    retry_after: Annotated[
        float | None, typer.Option("--retry-after", min=0.0, help="Retry-After of a 429, seconds.", show_default="1")
    ] = None,
    timeout_seconds: Annotated[
        float | None,
        typer.Option("--timeout-seconds", min=0.0, help="How long a timeout fault holds a request.", show_default="30"),
    ] = None,
    script: Annotated[
        Path | None, typer.Option("--script", help="JSON list of rules: {match, tool_calls | content}.")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="JSON SimulatorConfig; the options above override it.")
    ] = None,
) -> None:
    """Serve an OpenAI-compatible model with deterministic answers; admin API under /_simulator."""
    import uvicorn

    from agentctl.cli.serve import _exit_normally_after_drain
    from agentctl.simulator import SimulatorConfig, SimulatorConfigError, create_simulator_app
    from agentctl.simulator.config import load_config_file, load_script_file

    faults = {
        "rate_429": fail_429,
        "rate_500": fail_500,
        "rate_timeout": fail_timeout,
        "rate_malformed": fail_malformed,
        "rate_stream_cut": fail_stream_cut,
        "retry_after_seconds": retry_after,
        "timeout_seconds": timeout_seconds,
    }
    top_level = {
        "ttft_ms": ttft_ms,
        "tokens_per_second": tokens_per_second,
        "answer_tokens": answer_tokens,
        "embedding_dims": embedding_dims,
        "seed": seed,
    }
    try:
        data = (load_config_file(config_file) if config_file else SimulatorConfig()).to_dict()
        data.update({name: value for name, value in top_level.items() if value is not None})
        given_faults = {name: value for name, value in faults.items() if value is not None}
        if given_faults:
            data["faults"]["*"] = {**data["faults"].get("*", {}), **given_faults}
        if script is not None:
            data["script"] = [_builtins(rule) for rule in load_script_file(script)]
        config = SimulatorConfig.from_dict(data)
    except SimulatorConfigError as error:
        typer.echo(f"agentctl: {error}", err=True)
        raise typer.Exit(2) from None

    try:
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as error:
        typer.echo(f"agentctl: cannot listen on {host}:{port}: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None
    bound_port = listener.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}"
    typer.echo(f"LLM simulator listening on {url} (OpenAI base URL {url}/v1; admin API {url}/_simulator)")
    server = uvicorn.Server(
        uvicorn.Config(
            create_simulator_app(config),
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,  # a held (timeout fault) request must not delay the exit
        )
    )
    _exit_normally_after_drain()
    server.run(sockets=[listener])


def _builtins(value: object) -> Any:
    import msgspec

    return msgspec.to_builtins(value)
