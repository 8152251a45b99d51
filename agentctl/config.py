"""The one configuration core shared by every command and the server.

This is the only module that reads (or writes) the process environment. Precedence, highest first:
CLI flag > environment variable (``AGENTCTL_*`` and the conventional ``DATABASE_URL``, ``REDIS_URL``,
``OPENAI_API_KEY``) > ``.env.<environment>`` > ``.env`` > default. Every resolved value remembers
where it came from so that ``agentctl config show`` can say so.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import limits
from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

Environment = Literal["development", "staging", "production", "test"]
ENV_PREFIX = "AGENTCTL_"
NESTED_DELIMITER = "__"
ENVIRONMENT_VARIABLE = "AGENTCTL_ENV"
MIN_PRODUCTION_JWT_SECRET_BYTES = 32

# Conventional variable names that tools and platforms already set, mapped to their setting.
CONVENTIONAL_VARIABLES: dict[str, tuple[str, ...]] = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("redis", "url"),
    "OPENAI_API_KEY": ("llm", "api_key"),
    "LANGFUSE_PUBLIC_KEY": ("observability", "langfuse_public_key"),
    "LANGFUSE_SECRET_KEY": ("observability", "langfuse_secret_key"),
    "LANGFUSE_HOST": ("observability", "langfuse_host"),
}


class SettingsError(Exception):
    """Raised when the configuration is invalid; carries one human line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatabaseSettings(_Section):
    url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:password@host:5432/db). Unset: an embedded "
        "PostgreSQL 16 with pgvector starts under the data directory. Also read from DATABASE_URL.",
    )
    pool_min_size: int = Field(default=1, ge=0, description="Connections each process keeps open.")
    pool_max_size: int = Field(default=10, ge=1, description="Most connections one process opens.")
    connect_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Time allowed to open a connection, or to wait for a pooled one: while the database is down, "
        "requests get a 503 this soon.",
    )
    command_timeout_seconds: float = Field(default=30.0, gt=0, description="Time allowed for one statement.")
    max_idle_seconds: float = Field(default=300.0, gt=0, description="A pooled connection idle this long is closed.")
    readiness_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Time /health/ready waits for the database before reporting it down."
    )

    @model_validator(mode="after")
    def _pool_bounds_are_ordered(self) -> DatabaseSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must not exceed pool_max_size ({self.pool_max_size})"
            )
        return self


class RedisSettings(_Section):
    url: SecretStr | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0) shared by workers and replicas for rate limits and "
        "revocation. Unset: in-process memory. Also read from REDIS_URL.",
    )
    timeout_seconds: float = Field(default=2.0, gt=0, description="Time allowed for one Redis command.")
    key_prefix: str = Field(
        default="agentctl",
        min_length=1,
        description="Prefix of every key agentctl writes, so deployments can share a Redis.",
    )


class ServerSettings(_Section):
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the HTTP server binds to.")
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes serving requests.")
    reload: bool = Field(default=False, description="Restart on code changes (development only).")
    graceful_shutdown_seconds: float = Field(
        default=30.0, gt=0, description="On SIGTERM, time in-flight requests get to finish."
    )
    request_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted; larger bodies get 413."
    )
    max_header_bytes: int = Field(
        default=65_536,
        ge=4096,
        le=1_048_576,
        description="Largest request line and headers accepted; larger ones get 431 and the connection is closed.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time a client gets to send a request's line and headers; slower ones get 408 (slowloris).",
    )
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser, comma-separated. Empty: no CORS.",
    )
    cors_max_age_seconds: int = Field(default=600, ge=0, description="How long browsers may cache a preflight answer.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of proxies whose X-Forwarded-For is believed, comma-separated.",
    )
    web_enabled: bool = Field(
        default=True,
        description="Serve the web chat page at / (its assets under /web/, its cookie sign-in under "
        "/api/v1/auth/web/). Off: the server is an API only.",
    )
    readiness_requires: Annotated[list[Literal["models", "redis", "memory", "mcp"]], NoDecode] = Field(
        default_factory=list,
        description="Shared dependencies whose failure makes /health/ready answer 503, comma-separated (models, "
        "redis, memory, mcp: every MCP server up). Empty: they are reported as degraded and the instance stays "
        "ready; the database always counts, and Redis does when rate limits fail closed.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # raises ValueError naming the bad entry
        return value

    @field_validator("cors_allowed_origins", "trusted_proxies", "readiness_requires", mode="before")
    @classmethod
    def _split_comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value


class AuthSettings(_Section):
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs tokens (HS*); at least 32 bytes. Required in production. Unset elsewhere: "
        "a random key is kept in the data directory.",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"] = Field(
        default="HS256", description="Algorithm that signs tokens; RS256, ES256 and EdDSA use the key pair below."
    )
    jwt_private_key: SecretStr | None = Field(
        default=None, description="PEM private key that signs tokens, for the asymmetric algorithms."
    )
    jwt_public_key: str | None = Field(
        default=None, description="PEM public key that verifies tokens, for the asymmetric algorithms."
    )
    jwt_issuer: str = Field(default="agentctl", description="The iss claim written into and required of tokens.")
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300, description="Clock skew tolerated on exp and iat.")
    access_token_ttl_seconds: int = Field(default=1800, ge=60, description="Lifetime of an access (user) token.")
    refresh_token_ttl_seconds: int = Field(
        default=30 * 86400, ge=300, description="Lifetime of a refresh token and of its family."
    )
    session_token_ttl_seconds: int = Field(default=86400, ge=60, description="Lifetime of a session-scoped token.")
    argon2_time_cost: int = Field(default=2, ge=1, description="argon2id iterations (OWASP minimum: 2).")
    argon2_memory_kib: int = Field(
        default=19456, ge=8192, description="argon2id memory in KiB (OWASP minimum: 19 MiB)."
    )
    argon2_parallelism: int = Field(default=1, ge=1, description="argon2id lanes.")
    hashing_threads: int = Field(
        default=0,
        ge=0,
        description="Threads per worker that hash passwords; 0: the cores divided among the workers (at least 1). "
        "More threads admit more sign-ins at once but take CPU from the event loops.",
    )
    password_min_length: int = Field(default=8, ge=1, description="Fewest characters a password may have.")
    password_max_length: int = Field(default=128, ge=8, le=1024, description="Most characters a password may have.")
    password_require_letter: bool = Field(default=True, description="A password must contain a letter.")
    password_require_digit: bool = Field(default=True, description="A password must contain a digit.")
    revocation_purge_interval_seconds: float = Field(
        default=3600, gt=0, description="How often expired revocation and refresh-token rows are deleted."
    )

    @model_validator(mode="after")
    def _keys_match_the_algorithm(self) -> AuthSettings:
        if not self.jwt_algorithm.startswith("HS") and not (self.jwt_private_key and self.jwt_public_key):
            raise ValueError(f"{self.jwt_algorithm} needs jwt_private_key and jwt_public_key (PEM)")
        return self


def _parseable_rate_limit(value: str) -> str:
    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit; write it like 10/hour or 5 per minute") from None
    return value


RateLimit = Annotated[str, AfterValidator(_parseable_rate_limit)]


class RateLimitSettings(_Section):
    enabled: bool = Field(default=True, description="Apply rate limits at all.")
    register_per_ip: RateLimit = Field(default="10/hour", description="Sign-ups per client IP.")
    login_per_ip: RateLimit = Field(default="20/minute", description="Login attempts per client IP.")
    login_per_email: RateLimit = Field(default="5/minute", description="Login attempts per email address.")
    chat: RateLimit = Field(default="100/minute", description="Chat requests per user.")
    default: RateLimit = Field(default="1000/hour", description="Any other request, per user or else per client IP.")
    on_storage_error: Literal["allow", "deny"] = Field(
        default="allow",
        description="When the limit store (Redis) fails: allow the request (fail open) or answer 503 (fail closed).",
    )


Role = Literal["chat", "fast", "reasoning", "memory", "judge", "embedding"]
ROLES: tuple[Role, ...] = ("chat", "fast", "reasoning", "memory", "judge", "embedding")
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class ModelSpec(_Section):
    """One model endpoint. Declared under [models.<name>] in the models file; env can override any field
    (AGENTCTL_LLM__MODELS__<NAME>__<FIELD>)."""

    provider: Literal["openai", "local"] = Field(
        default="openai", description="openai: any OpenAI-compatible endpoint; local: the bundled CPU models."
    )
    model_id: str = Field(default="", description="The provider's name for the model (gpt-4o-mini, ...).")
    kind: Literal["chat", "embedding"] = Field(default="chat", description="What the model does.")
    base_url: str | None = Field(default=None, description="Endpoint; unset: the provider's default.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding this model's key; unset: OPENAI_API_KEY."
    )
    api_key: SecretStr | None = Field(default=None, description="The key itself (prefer api_key_env).")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="Most tokens one answer may have.")
    context_window: int = Field(default=8192, ge=256, description="Tokens the model reads at most.")
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        default=None, description="For reasoning models."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Time one request to the model may take.")
    price_input_per_million: float = Field(default=0.0, ge=0, description="USD per million input tokens.")
    price_cached_input_per_million: float | None = Field(
        default=None, ge=0, description="USD per million cached input tokens; unset: the input price."
    )
    price_output_per_million: float = Field(default=0.0, ge=0, description="USD per million output tokens.")
    embedding_dims: int | None = Field(default=None, ge=1, description="Vector size, for embedding models.")


class LLMSettings(_Section):
    models_file: Path | None = Field(
        default=None,
        description="TOML file declaring [models.<name>] and [roles] (and any other llm setting). Unset: one "
        "model from AGENTCTL_LLM__MODEL and OPENAI_API_KEY, or the bundled local model without a key.",
    )
    models: dict[str, ModelSpec] = Field(
        default_factory=dict, description="Declared models by name (usually from the models file)."
    )
    roles: dict[Role, list[str]] = Field(
        default_factory=dict,
        description="Ordered fallback chains per role (chat, fast, reasoning, memory, judge, embedding); a role "
        "left out uses the chat chain (embedding: the first embedding model).",
    )
    model: str = Field(default="gpt-4o-mini", description="Chat model when no models file is given.")
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint when no models file is given; unset: OpenAI's."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Key for OpenAI-compatible models that name no other. Also read from OPENAI_API_KEY."
    )
    max_attempts: int = Field(
        default=4,
        ge=1,
        le=10,
        description="Tries per model for a retryable failure (a model failing 30% of requests still answers 99% of "
        "calls; during an outage the circuit breaker stops the retries).",
    )
    backoff_initial_seconds: float = Field(default=0.25, ge=0, description="First retry waits up to this long.")
    backoff_max_seconds: float = Field(default=8.0, ge=0, description="No retry waits longer (jitter below it).")
    breaker_failure_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of failed calls that opens a model's circuit, once the calls of the window show it with "
        "99% confidence (six failures in a row at low volume; a few points above the rate at high volume).",
    )
    breaker_minimum_calls: int = Field(
        default=5, ge=1, description="Calls within the window before a model's circuit may open at all."
    )
    breaker_window_seconds: float = Field(
        default=30.0, gt=0, description="Window over which calls and failures are counted."
    )
    breaker_open_seconds: float = Field(
        default=15.0, gt=0, description="How long an open circuit skips its model before probes are let through."
    )
    breaker_half_open_calls: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Probe calls let through after the open period; fewer failures than the rate closes the circuit.",
    )
    max_connections: int = Field(
        default=100,
        ge=1,
        description="Connections each worker keeps to model endpoints for chat (all models together).",
    )
    background_max_connections: int = Field(
        default=10,
        ge=1,
        description="Connections each worker keeps to model endpoints for background work (memory, judge): a pool of "
        "their own, so that background calls never take or wait for chat's.",
    )
    call_deadline_seconds: float = Field(
        default=60.0, gt=0, description="One model call, retries and fallbacks included, ends by then."
    )
    probe_cache_seconds: float = Field(
        default=10.0,
        gt=0,
        description="/health/ready asks each chat model's endpoint whether it answers (GET /models) at most this "
        "often per worker.",
    )
    probe_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Time a model endpoint gets to answer the readiness probe."
    )

    @field_validator("models")
    @classmethod
    def _lower_case_names(cls, value: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in value:
            if not _MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r} must be lower case letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _roles_name_declared_models(self) -> LLMSettings:
        for role, chain in self.roles.items():
            unknown = [name for name in chain if name not in self.models]
            if unknown:
                raise ValueError(f"role {role} names undeclared model(s): {', '.join(unknown)}")
            wrong_kind = [name for name in chain if (self.models[name].kind == "embedding") != (role == "embedding")]
            if wrong_kind:
                raise ValueError(f"role {role} names model(s) of the wrong kind: {', '.join(wrong_kind)}")
        for name, spec in self.models.items():
            if spec.provider == "openai" and not spec.model_id:
                raise ValueError(f"model {name} needs a model_id")
        return self


ToolPolicy = Literal["allow", "approve", "deny"]
_SERVER_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*$"  # no double underscore: it separates server and tool


class ToolRule(_Section):
    """One tool's own rules, over its server's (or the built-ins') defaults."""

    policy: ToolPolicy | None = Field(
        default=None,
        description="allow (runs), approve (waits for the user's yes, edit or no), deny (never offered to the model).",
    )
    timeout_seconds: float | None = Field(default=None, gt=0, description="Time one call may take.")
    max_output_chars: int | None = Field(default=None, ge=100, description="Longest result the model reads.")


class McpServerSettings(_Section):
    """One MCP server: a command to run (stdio) or a URL (streamable HTTP)."""

    command: str | None = Field(default=None, description="stdio: the program to start.")
    args: list[str] = Field(default_factory=list, description="stdio: its arguments.")
    env: dict[str, SecretStr] = Field(
        default_factory=dict, description="stdio: environment variables of its process (besides PATH and HOME)."
    )
    cwd: Path | None = Field(default=None, description="stdio: its working directory.")
    url: str | None = Field(default=None, description="Streamable HTTP: the server's endpoint (http or https).")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Streamable HTTP: headers of every request (Authorization: ${TOKEN}...)."
    )
    enabled: bool = Field(default=True, description="A disabled server is neither started nor offered.")
    policy: ToolPolicy = Field(
        default="approve",
        description="Default policy of its tools: approve (the user says yes first) unless the operator trusts them.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Time one call of its tools may take.")
    max_output_chars: int = Field(default=20_000, ge=100, description="Longest result of its tools the model reads.")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Time to start and initialize it.")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (a streamable HTTP server)")
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"url must be http or https, not {self.url!r}")
        return self

    @property
    def transport(self) -> Literal["stdio", "streamable_http"]:
        return "stdio" if self.command is not None else "streamable_http"


class AgentSettings(_Section):
    name: str = Field(default="Agent", min_length=1, max_length=64, description="The agent's name in its prompt.")
    prompts_dir: Path | None = Field(
        default=None, description="Folder with system.md and the other prompts; unset: the ones shipped with agentctl."
    )
    prompt_reload_seconds: float = Field(
        default=2.0, ge=0, description="How often a changed prompt file is noticed (0: read it every turn)."
    )
    max_steps: int = Field(default=8, ge=1, le=50, description="Model calls one turn may make (tool loops included).")
    message_max_chars: int = Field(default=10_000, ge=1, description="Longest user message accepted.")
    stream_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="An SSE stream sends a comment this often, so proxies never see it idle."
    )
    web_search_timeout_seconds: float = Field(default=8.0, gt=0, description="Time one web search may take.")
    web_search_max_results: int = Field(default=5, ge=1, le=20, description="Results one web search returns.")
    tool_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Time one call of a built-in tool may take before the model is told it failed."
    )
    tool_max_output_chars: int = Field(
        default=20_000, ge=100, description="Longest result of a built-in tool the model reads (the rest is cut)."
    )
    tools: dict[str, ToolRule] = Field(
        default_factory=dict,
        description="Per tool, by the name the model sees (web_search, time__get_current_time...): its policy "
        "(allow, approve, deny), timeout and output cap, over its server's defaults. Usually from the MCP servers "
        "file's [tools.<name>] tables.",
    )
    mcp_servers_file: Path | None = Field(
        default=None,
        description="MCP servers to take tools from: JSON in the mcpServers shape other clients use, or TOML "
        "([mcp_servers.<name>], [tools.<name>]). Secret values come from the environment as ${VARIABLE}.",
    )
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict, description="MCP servers by name (usually from the MCP servers file)."
    )
    mcp_start_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a starting worker waits for its MCP servers; one not up by then is retried in the "
        "background and its tools come when it does.",
    )
    mcp_restart_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait between two restarts of an MCP server that keeps failing."
    )
    mcp_ping_seconds: float = Field(
        default=10.0, gt=0, description="How often each MCP server is pinged (a server that does not answer restarts)."
    )

    @field_validator("mcp_servers")
    @classmethod
    def _names_that_namespace(cls, servers: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        # The model sees <server>__<tool>: a name without "__" splits at its first one, and no built-in has one.
        for name in servers:
            if len(name) > 32 or not re.match(_SERVER_NAME, name):
                raise ValueError(
                    f"server name {name!r}: up to 32 letters, digits, - and single _, starting with a letter or digit"
                )
        return servers


MultitaskStrategy = Literal["reject", "enqueue", "interrupt", "rollback"]
OnDisconnect = Literal["continue", "cancel"]


class AdmissionSettings(_Section):
    """What a worker takes on: turns and sign-ins beyond what it can answer in time are refused at once (503,
    Retry-After, problem overloaded) rather than queued."""

    enabled: bool = Field(default=True, description="Refuse work beyond the bounds below; off: queue everything.")
    max_turns: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Turns one worker runs at once, fixed. Unset: the bound adapts to the event loop's lag, between "
        "min_turns and max_turns_ceiling.",
    )
    initial_turns: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="The adaptive bound's starting value: high, so that a burst on an idle worker is taken, and the "
        "bound comes down only when the loop shows it cannot keep up.",
    )
    min_turns: int = Field(default=4, ge=1, le=10_000, description="The adaptive bound never goes below this.")
    max_turns_ceiling: int = Field(
        default=1000, ge=1, le=10_000, description="The adaptive bound never goes above this."
    )
    target_loop_lag_ms: float = Field(
        default=10.0,
        gt=0,
        description="Event-loop lag above which the adaptive bound shrinks (by target/lag, between a tenth and a half, "
        "per half second); below half of it, with the bound in use, it grows by a tenth (at least one).",
    )
    max_wait_seconds: float = Field(
        default=0.25,
        ge=0,
        le=60,
        description="How long a turn may wait for a free slot; one not expected to get it in time is refused at once.",
    )
    hashing_backlog_max_seconds: float = Field(
        default=3.0,
        gt=0,
        description="Sign-ups and sign-ins are refused at once when the password-hashing backlog passes this.",
    )


class ChatSettings(_Section):
    """Runs: turns with an id that outlive the connection that asked for them."""

    on_disconnect: OnDisconnect = Field(
        default="continue",
        description="What a run does when the client that started it disconnects: continue (its answer lands in "
        "the history and can be rejoined) or cancel (it stops, keeping its partial answer).",
    )
    multitask_strategy: MultitaskStrategy = Field(
        default="reject",
        description="A message arriving while its session has an active run: reject (409), enqueue (runs after "
        "it), interrupt (cancels it, keeping its partial answer) or rollback (cancels it, dropping its partial "
        "answer).",
    )
    max_queued: int = Field(default=10, ge=1, le=1000, description="Runs one session may have queued (429 beyond).")
    run_events_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="How long a finished run's events can still be replayed."
    )
    run_lease_seconds: float = Field(
        default=15.0,
        ge=1,
        description="A running run's worker renews its lease this often (a third of it); a run whose lease lapses "
        "ended with its worker: error worker-lost.",
    )
    event_flush_seconds: float = Field(
        default=0.05,
        ge=0,
        le=5,
        description="How long a run's tokens gather before they are written to the shared event log (one write "
        "per burst); followers on other workers and replicas see them that much later.",
    )


class RetentionSettings(_Section):
    """What the database keeps: a sweeper in the server (one replica at a time, in small batches) and `agentctl
    retention run` remove the rest. Unset durations keep forever."""

    enabled: bool = Field(default=True, description="Run the retention sweeper in the server.")
    sweep_interval_seconds: float = Field(default=300.0, ge=1, description="Time between two sweeps.")
    batch_size: int = Field(
        default=500, ge=1, le=100_000, description="Rows one statement removes: small batches keep chat latency flat."
    )
    batch_pause_seconds: float = Field(
        default=0.05, ge=0, le=10, description="Pause between two batches, leaving the database to the chat."
    )
    idle_session_days: float | None = Field(
        default=None, gt=0, description="Delete a session (its conversation and turns) idle this long."
    )
    checkpoint_turns_kept: int = Field(
        default=50,
        ge=1,
        description="Per conversation, the newest turns whose checkpoints are kept (their messages can be edited and "
        "their answers regenerated); older checkpoints are pruned, except each branch's latest state.",
    )
    turn_record_days: float | None = Field(
        default=None, gt=0, description="Delete turn records (and their scores) older than this."
    )
    memory_days: float | None = Field(
        default=None, gt=0, description="Delete long-term memories not updated for this long."
    )


class BudgetSettings(_Section):
    """What each user may spend, checked before the model is called; per-user overrides with `agentctl users
    set-budget`. Unset: unlimited. Days and months are UTC."""

    daily_tokens: int | None = Field(default=None, ge=0, description="Tokens (input + output) a user may use a day.")
    monthly_tokens: int | None = Field(default=None, ge=0, description="Tokens a user may use a calendar month.")
    daily_cost_usd: float | None = Field(default=None, ge=0, description="Model cost (USD) a user may incur a day.")
    monthly_cost_usd: float | None = Field(default=None, ge=0, description="Model cost a user may incur a month.")


class MemorySettings(_Section):
    enabled: bool = Field(
        default=True, description="Long-term memory (Mem0 on pgvector): recall before each turn, remember after it."
    )
    recall_budget_seconds: float = Field(
        default=0.3, gt=0, description="Time the memory search before a turn may take; later, the turn goes on without."
    )
    recall_limit: int = Field(default=5, ge=1, le=50, description="Memories given to the model per turn, at most.")
    recall_threshold: float = Field(
        default=0.1, ge=0, le=1, description="Lowest relevance score (0-1) of a memory worth recalling."
    )
    recall_cache_seconds: float = Field(
        default=30.0, ge=0, description="How long one worker reuses a search's result for the same user and message."
    )
    queue_size: int = Field(
        default=1000, ge=1, description="Turns waiting to be remembered per worker; beyond it new ones are dropped."
    )
    writers: int = Field(default=2, ge=1, le=32, description="Turns remembered at once per worker.")
    drain_seconds: float = Field(
        default=30.0, ge=0, description="At shutdown, time allowed to finish remembering the turns already queued."
    )
    extraction: Literal["auto", "model", "verbatim"] = Field(
        default="auto",
        description="model: the memory role's model extracts facts (one call per turn); verbatim: the user's "
        "messages are stored as they are; auto: model, unless that model is the bundled local one, whose "
        "context cannot hold Mem0's prompt.",
    )
    pool_max_size: int = Field(default=4, ge=1, description="Connections Mem0's own (psycopg) pool opens per worker.")


class ObservabilitySettings(_Section):
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level written to the log."
    )
    log_format: Literal["auto", "text", "json"] = Field(
        default="auto",
        description="text for people, json for collectors; auto: text in development and test, json elsewhere.",
    )
    langfuse_public_key: SecretStr | None = Field(
        default=None, description="Langfuse public key; with the secret key, every turn is traced. LANGFUSE_PUBLIC_KEY."
    )
    langfuse_secret_key: SecretStr | None = Field(
        default=None, description="Langfuse secret key. Also read from LANGFUSE_SECRET_KEY."
    )
    langfuse_host: str = Field(
        default="https://cloud.langfuse.com", description="Langfuse server URL. Also read from LANGFUSE_HOST."
    )

    @property
    def tracing_enabled(self) -> bool:
        return self.langfuse_public_key is not None and self.langfuse_secret_key is not None


class EvalSettings(_Section):
    metrics_dir: Path | None = Field(
        default=None,
        description="Folder of metric prompt files (<name>.md) for `agentctl eval`; unset: the ones shipped with "
        "agentctl (prompts/evals).",
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Judge calls `agentctl eval` makes at once.")
    pairwise_prompt: Path | None = Field(
        default=None,
        description="The pairwise judge's instructions for `agentctl eval replay` (which of two answers is better); "
        "unset: prompts/pairwise.md shipped with agentctl.",
    )
    replay_concurrency: int = Field(
        default=4, ge=1, le=64, description="Cases `agentctl eval replay` answers and judges at once."
    )
    judge_attempts: int = Field(
        default=2, ge=1, le=10, description="Tries per judgement when the judge's answer is not valid; then a failure."
    )
    judge_max_chars: int = Field(
        default=8000, ge=100, description="Longest user message and answer shown to the judge; the rest is cut."
    )
    gauge_refresh_seconds: float = Field(
        default=30.0, gt=0, description="How often the server reads the latest evaluation run for its /metrics gauges."
    )


class Settings(BaseSettings):
    """Every setting of agentctl. Build it with :func:`load_settings`; ``Settings()`` is defaults only."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    env: Environment = Field(
        default="development", description="Deployment environment: development, staging, production or test."
    )
    debug: bool = Field(default=False, description="Show internal error details in responses. Never in production.")
    data_dir: Path = Field(
        default=Path(".agentctl"), description="Where local state lives: the embedded database among others."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The API key `agentctl chat` acts with instead of signing in (a key with the chat scope, from "
        "POST /api/v1/auth/api-keys or the web page): no prompt, for scripts and CI.",
    )
    database: DatabaseSettings = Field(default_factory=DatabaseSettings, description="PostgreSQL.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP server.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="Tokens and passwords.")
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings, description="Rate limits.")
    llm: LLMSettings = Field(default_factory=LLMSettings, description="Model provider.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The agent.")
    chat: ChatSettings = Field(default_factory=ChatSettings, description="Runs: rejoining, queueing, leases.")
    admission: AdmissionSettings = Field(
        default_factory=AdmissionSettings,
        description="Admission control: refusing at once what cannot be done in time.",
    )
    memory: MemorySettings = Field(default_factory=MemorySettings, description="Long-term memory.")
    retention: RetentionSettings = Field(default_factory=RetentionSettings, description="What the database keeps.")
    budget: BudgetSettings = Field(default_factory=BudgetSettings, description="What each user may spend.")
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings, description="Logs and metrics.")
    evals: EvalSettings = Field(default_factory=EvalSettings, description="Evaluation (LLM as a judge).")

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit values: load_settings() reads the environment and files itself, so that it can
        # record where each value came from.
        return (init_settings,)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    def source_of(self, dotted_path: str) -> str:
        """Where the value of ``dotted_path`` came from: a flag, a variable, a file, or the default."""
        return self._sources.get(dotted_path, "default")

    @property
    def uses_embedded_database(self) -> bool:
        return self.database.url is None

    @property
    def effective_log_format(self) -> Literal["text", "json"]:
        if self.observability.log_format != "auto":
            return self.observability.log_format
        return "text" if self.env in ("development", "test") else "json"

    def production_problems(self) -> list[str]:
        """What makes these settings unsafe to serve in production (empty when they are fine)."""
        if self.env != "production":
            return []
        problems = []
        secret = self.auth.jwt_secret.get_secret_value() if self.auth.jwt_secret else ""
        symmetric = self.auth.jwt_algorithm.startswith("HS")
        if symmetric and len(secret.encode()) < MIN_PRODUCTION_JWT_SECRET_BYTES:
            problems.append(
                f"{variable_name(('auth', 'jwt_secret'))} must be set to at least "
                f"{MIN_PRODUCTION_JWT_SECRET_BYTES} bytes in production "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if "*" in self.server.cors_allowed_origins:
            problems.append(
                f"{variable_name(('server', 'cors_allowed_origins'))} must list explicit origins in production, not '*'"
            )
        if self.debug:
            problems.append(f"{variable_name(('debug',))} must be false in production")
        return problems


def variable_name(path: tuple[str, ...]) -> str:
    """The AGENTCTL_ environment variable that sets the value at ``path``."""
    return ENV_PREFIX + NESTED_DELIMITER.join(part.upper() for part in path)


def redact_url(url: str) -> str:
    """The URL with its password replaced, so it can be printed and logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    override_labels: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file_dir: Path | None = None,
) -> Settings:
    """Resolve the settings from flags, the environment, .env files and defaults.

    ``overrides`` holds flag values as a nested dict (``{"server": {"port": 9000}}``);
    ``override_labels`` names the flag of each dotted path for ``config show``.
    Raises :class:`SettingsError` with one line per invalid or unknown value.
    """
    environ = os.environ if environ is None else environ
    directory = env_file_dir or Path.cwd()
    overrides = dict(overrides or {})
    base_file = _read_env_file(directory / ".env")
    environment = str(
        overrides.get("env")
        or environ.get(ENVIRONMENT_VARIABLE)
        or base_file.get(ENVIRONMENT_VARIABLE)
        or "development"
    )
    env_file = directory / f".env.{environment}"

    # Lowest priority first; each later layer overwrites the earlier ones.
    layers: list[tuple[dict[str, Any], str | Mapping[str, str]]] = [
        (_dotenv_layer(directory / ".env", base_file), ".env"),
        (_dotenv_layer(env_file, _read_env_file(env_file)), f".env.{environment}"),
        (_conventional_layer(environ), "environment"),
        (_EnvironmentSource(environ)(), "environment"),
        (overrides, dict(override_labels or {})),
    ]
    problems = _unknown_variables(environ, "environment") + _unknown_variables(base_file, ".env")
    problems += _unknown_variables(_read_env_file(env_file), f".env.{environment}")
    if problems:
        raise SettingsError(problems)

    merged, sources = _merge_layers(layers, environ)
    models_file = merged.get("llm", {}).get("models_file")
    if models_file:
        # The models file sits just above the defaults: every other source can override what it declares.
        path = Path(models_file) if Path(models_file).is_absolute() else directory / models_file
        layers.insert(0, ({"llm": _read_models_file(path)}, str(path)))
        merged, sources = _merge_layers(layers, environ)
    variables = {**base_file, **_read_env_file(env_file), **environ}
    mcp_file = merged.get("agent", {}).get("mcp_servers_file")
    if mcp_file:
        path = Path(mcp_file) if Path(mcp_file).is_absolute() else directory / mcp_file
        layers.insert(0, ({"agent": _read_mcp_servers_file(path, variables)}, str(path)))
        merged, sources = _merge_layers(layers, environ)
    _resolve_model_keys(merged, sources, variables)
    try:
        settings = Settings(**merged)
    except ValidationError as error:
        raise SettingsError(_describe_validation_error(error, sources)) from None
    settings._sources = sources
    return settings


def _merge_layers(
    layers: list[tuple[dict[str, Any], str | Mapping[str, str]]], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for values, label in layers:
        _deep_merge(merged, values)
        for path in _leaf_paths(values):
            dotted = ".".join(path)
            if isinstance(label, str):
                sources[dotted] = _describe_source(label, path, environ)
            else:
                sources[dotted] = f"flag {label.get(dotted, '')}".strip()
    return merged, sources


def _read_models_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError([f"{variable_name(('llm', 'models_file'))}: no such file: {path}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SettingsError([f"{path}: not valid TOML: {error}"]) from None


_VARIABLE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# The mcpServers shape of other clients: their key for the transport, and its values, in ours.
_MCP_TRANSPORT_KEYS = ("type", "transport")
_MCP_TRANSPORTS = {"stdio": "stdio", "http": "streamable_http", "streamable-http": "streamable_http"}


def _read_mcp_servers_file(path: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    """The file's servers and tool rules as agent settings. JSON (``{"mcpServers": {...}, "tools": {...}}``, as
    Claude Desktop, Cursor and others write it) or TOML (``[mcp_servers.<name>]``, ``[tools.<name>]``); every
    ``${VARIABLE}`` (or ``${VARIABLE:-default}``) in a string is replaced by its value from the environment."""
    where = variable_name(("agent", "mcp_servers_file"))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([f"{where}: no such file: {path}"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError([f"{where}: cannot read {path}: {error}"]) from None
    try:
        document = json.loads(text) if path.suffix == ".json" or text.lstrip().startswith("{") else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" or text.lstrip().startswith("{") else "TOML"
        raise SettingsError([f"{path}: not valid {kind}: {error}"]) from None
    if not isinstance(document, dict):
        raise SettingsError([f"{path}: expected an object with mcpServers"])
    unknown = set(document) - {"mcpServers", "mcp_servers", "tools"}
    if unknown:
        raise SettingsError([f"{path}: unknown keys {sorted(unknown)}: expected mcpServers (or mcp_servers) and tools"])
    servers = document.get("mcpServers", document.get("mcp_servers", {}))
    if not isinstance(servers, dict) or not all(isinstance(spec, dict) for spec in servers.values()):
        raise SettingsError([f"{path}: mcpServers must map each server's name to its settings"])
    problems: list[str] = []
    normalized: dict[str, Any] = {}
    for name, spec in servers.items():
        spec = dict(spec)
        transport = next((spec.pop(key) for key in _MCP_TRANSPORT_KEYS if key in spec), None)
        if transport is not None and _MCP_TRANSPORTS.get(str(transport).replace("_", "-")) is None:
            problems.append(
                f"{path}: server {name}: transport {transport!r} is not supported (stdio or http; the SSE transport "
                "is deprecated in MCP: use the server's streamable HTTP endpoint)"
            )
            continue
        if "disabled" in spec:  # Claude Desktop's and Cline's switch
            spec["enabled"] = not spec.pop("disabled")
        normalized[name] = _expand_variables(spec, variables, f"{path}: server {name}", problems)
    if problems:
        raise SettingsError(problems)
    return {"mcp_servers": normalized, "tools": document.get("tools", {})}


def _expand_variables(value: Any, variables: Mapping[str, str], where: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {key: _expand_variables(item, variables, where, problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_variables(item, variables, where, problems) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in variables:
            return variables[name]
        if default is not None:
            return default
        problems.append(f"{where}: ${{{name}}} is not set in the environment")
        return ""

    return _VARIABLE_REFERENCE.sub(replace, value)


def _resolve_model_keys(merged: dict[str, Any], sources: dict[str, str], variables: Mapping[str, str]) -> None:
    """A model's api_key_env names a variable; its value becomes the model's key (read here, like all config)."""
    for name, spec in merged.get("llm", {}).get("models", {}).items():
        if not isinstance(spec, dict) or spec.get("api_key") or not spec.get("api_key_env"):
            continue
        value = variables.get(spec["api_key_env"])
        if value:
            spec["api_key"] = value
            sources[f"llm.models.{name}.api_key"] = f"environment {spec['api_key_env']}"


def environment_without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less every variable agentctl reads as a setting: a process started for a test or a load test is
    configured by its starter alone, not by whatever the caller's shell exports."""
    return {
        key: value
        for key, value in environ.items()
        if not key.startswith(ENV_PREFIX) and key not in CONVENTIONAL_VARIABLES
    }


def export_for_child_processes(values: Mapping[str, Any], *, environ: dict[str, str] | None = None) -> None:
    """Write nested setting values as AGENTCTL_ variables so that worker processes resolve the same settings."""
    target = os.environ if environ is None else environ
    for path in _leaf_paths(values):
        value: Any = values
        for part in path:
            value = value[part]
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        target[variable_name(path)] = str(value)


def prepare_mem0_environment(settings: Settings, *, environ: dict[str, str] | None = None) -> Path:
    """What mem0 reads from the environment at import time, set before that import: no telemetry (it would
    contact PostHog and GitHub), and its own directory under the data directory rather than ~/.mem0.
    Returns that directory."""
    target = os.environ if environ is None else environ
    directory = settings.data_dir / "mem0"
    directory.mkdir(parents=True, exist_ok=True)
    target["MEM0_TELEMETRY"] = "False"
    target["MEM0_DIR"] = str(directory)
    return directory


def prepare_metrics_directory(settings: Settings, *, environ: dict[str, str] | None = None) -> Path:
    """A fresh directory where every worker of this `agentctl serve` writes its metric samples, so that any
    worker can answer a scrape for all (prometheus-client's multiprocess mode). It must be named in the
    environment before prometheus-client is first imported: the workers inherit it. Returns the directory."""
    import shutil

    target = os.environ if environ is None else environ
    directory = settings.data_dir / "metrics" / f"serve-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    target["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def iter_settings(settings: Settings) -> Iterator[tuple[str, str, str, str]]:
    """(dotted name, printable value, source, help) for every setting, secrets masked."""
    yield from _iter_model(settings, (), settings)


def _iter_model(model: BaseModel, prefix: tuple[str, ...], root: Settings) -> Iterator[tuple[str, str, str, str]]:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        path = (*prefix, name)
        if isinstance(value, BaseModel):
            yield from _iter_model(value, path, root)
            continue
        if isinstance(value, dict) and value and all(isinstance(item, BaseModel) for item in value.values()):
            for key, item in value.items():
                yield from _iter_model(item, (*path, key), root)
            continue
        dotted = ".".join(path)
        yield dotted, _printable(name, value), root.source_of(dotted), field.description or ""


def _printable(name: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        # A URL stays useful with only its password hidden; any other secret is hidden whole.
        raw = value.get_secret_value()
        return redact_url(raw) if name == "url" else "********"
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "(empty)"
    if isinstance(value, dict):
        return "; ".join(f"{key}={_printable(str(key), item)}" for key, item in value.items()) or "(empty)"
    return str(value)


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of always os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, self.env_ignore_empty, self.env_parse_none_str)


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def _dotenv_layer(path: Path, values: Mapping[str, str]) -> dict[str, Any]:
    if not values:
        return {}
    layer = DotEnvSettingsSource(Settings, env_file=path, case_sensitive=False, dotenv_filtering="only_existing")()
    _deep_merge(layer, _conventional_layer(values))
    return layer


def _conventional_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for variable, path in CONVENTIONAL_VARIABLES.items():
        if environ.get(variable):
            _deep_merge(layer, _nest(path, environ[variable]))
    return layer


def _describe_source(label: str, path: tuple[str, ...], environ: Mapping[str, str]) -> str:
    if label != "environment":
        return label
    name = variable_name(path)
    if name.lower() not in {key.lower() for key in environ}:
        conventional = next((var for var, target in CONVENTIONAL_VARIABLES.items() if target == path), None)
        name = conventional or name
    return f"environment {name}"


def _unknown_variables(values: Mapping[str, str], label: str) -> list[str]:
    problems = []
    for key in values:
        if not key.upper().startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in key[len(ENV_PREFIX) :].split(NESTED_DELIMITER))
        if not _is_known_path(Settings, path):
            problems.append(f"{key.upper()} ({label}): unknown setting; `agentctl config show` lists them all")
    return problems


def _is_known_path(model: type[BaseModel], path: tuple[str, ...]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return len(path) == 1 or _is_known_path(annotation, path[1:])
    if get_origin(annotation) is dict:
        # path[1] is a key of the mapping (a model name, a role); what follows belongs to its value.
        value_type = get_args(annotation)[1]
        if len(path) <= 2:
            return True
        return (
            isinstance(value_type, type) and issubclass(value_type, BaseModel) and _is_known_path(value_type, path[2:])
        )
    return len(path) == 1


def _describe_validation_error(error: ValidationError, sources: Mapping[str, str]) -> list[str]:
    lines = []
    for item in error.errors():
        path = tuple(str(part) for part in item["loc"])
        dotted = ".".join(path)
        nested_sources = sorted({label for key, label in sources.items() if key.startswith(f"{dotted}.")})
        source = sources.get(dotted) or ", ".join(nested_sources) or "default"
        given = item.get("input")
        might_be_secret = any(word in dotted for word in ("secret", "key", "url", "password"))
        shown = "" if might_be_secret or isinstance(given, dict) else f" (got {given!r})"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{variable_name(path) if path else 'settings'} from {source}: {message}{shown}")
    return lines


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    nested: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        nested = {part: nested}
    return nested


def _deep_merge(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value


def _leaf_paths(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _leaf_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)
