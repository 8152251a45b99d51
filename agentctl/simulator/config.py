"""What the simulator does: one JSON-serialisable config, replaceable at runtime through the admin API."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec

ANY_MODEL = "*"


class SimulatorConfigError(ValueError):
    """A config value out of range, or a config/script file that cannot be read; the message is one plain line."""


def _check_rate(owner: str, name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise SimulatorConfigError(f"{owner}{name} must be a probability between 0 and 1, got {value!r}")


def _check_non_negative(owner: str, name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise SimulatorConfigError(f"{owner}{name} must be a finite number >= 0, got {value!r}")


class FaultSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fault probabilities for one model id; each is drawn independently per request from the seeded RNG."""

    rate_429: float = 0.0
    retry_after_seconds: float = 1.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    timeout_seconds: float = 30.0
    rate_malformed: float = 0.0
    rate_stream_cut: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_500", "rate_timeout", "rate_malformed", "rate_stream_cut"):
            _check_rate("faults.", name, getattr(self, name))
        _check_non_negative("faults.", "retry_after_seconds", self.retry_after_seconds)
        _check_non_negative("faults.", "timeout_seconds", self.timeout_seconds)


class ScriptedToolCall(msgspec.Struct, forbid_unknown_fields=True):
    """A tool call a script rule answers with; ``arguments`` is an object, or a string sent verbatim."""

    name: str
    arguments: dict[str, Any] | str = {}


class ScriptRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """First rule whose ``match`` is a substring of the last user message wins.

    ``tool_calls`` apply only when the request offers tools (so a memory or title request that happens to
    contain the text is not answered with a tool call); ``content`` applies always; ``echo_system`` answers with
    the request's system prompt, so a test can see what the model was shown. ``verbatim`` sends ``content`` as it
    is even in JSON mode, like a model that breaks JSON mode (text, cut-off JSON).
    """

    match: str
    tool_calls: list[ScriptedToolCall] | None = None
    content: str | None = None
    echo_system: bool = False
    verbatim: bool = False

    def __post_init__(self) -> None:
        if self.tool_calls is None and self.content is None and not self.echo_system:
            raise SimulatorConfigError(f"script rule matching {self.match!r} needs tool_calls, content or echo_system")


class SimulatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole behaviour of the simulator. Defaults: instant, deterministic, no faults."""

    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0  # 0 = every token at once
    answer_tokens: int = 24
    embedding_dims: int = 384
    seed: int = 0
    faults: dict[str, FaultSpec] = {}
    script: list[ScriptRule] = []

    def __post_init__(self) -> None:
        _check_non_negative("", "ttft_ms", self.ttft_ms)
        _check_non_negative("", "tokens_per_second", self.tokens_per_second)
        if not (isinstance(self.answer_tokens, int) and self.answer_tokens >= 1):
            raise SimulatorConfigError(f"answer_tokens must be an integer >= 1, got {self.answer_tokens!r}")
        if not (isinstance(self.embedding_dims, int) and 1 <= self.embedding_dims <= 65536):
            raise SimulatorConfigError(f"embedding_dims must be an integer in 1..65536, got {self.embedding_dims!r}")

    def fault_for(self, model: str) -> FaultSpec | None:
        """The model's own spec, else the ``"*"`` one."""
        return self.faults.get(model) or self.faults.get(ANY_MODEL)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorConfig:
        return _convert(data, cls)

    @classmethod
    def from_json(cls, data: bytes | str) -> SimulatorConfig:
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError as error:
            raise SimulatorConfigError(f"invalid simulator config: {error}") from None
        except msgspec.DecodeError as error:
            raise SimulatorConfigError(f"simulator config is not valid JSON: {error}") from None


def _convert(data: Any, target: Any) -> Any:
    try:
        return msgspec.convert(data, type=target)
    except msgspec.ValidationError as error:
        raise SimulatorConfigError(f"invalid simulator config: {error}") from None


def load_config_file(path: Path) -> SimulatorConfig:
    """A whole SimulatorConfig from a JSON file."""
    return SimulatorConfig.from_json(_read(path))


def load_script_file(path: Path) -> list[ScriptRule]:
    """Script rules from a JSON file: a list of rules, or an object with a ``script`` list."""
    try:
        data = msgspec.json.decode(_read(path))
    except msgspec.DecodeError as error:
        raise SimulatorConfigError(f"{path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and "script" in data:
        data = data["script"]
    if not isinstance(data, list):
        raise SimulatorConfigError(f"{path} must hold a JSON list of script rules")
    return _convert(data, list[ScriptRule])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SimulatorConfigError(f"cannot read {path}: {error.strerror or error}") from None
