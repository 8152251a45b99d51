"""What the root command hands its subcommands: the flags given, as setting overrides."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from agentctl.config import Settings, load_settings


@dataclass
class CliState:
    overrides: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def add_flag(self, dotted_path: str, value: Any, flag: str) -> None:
        """Record a flag's value as an override of the setting at ``dotted_path``; None means not given."""
        if value is None:
            return
        *sections, name = dotted_path.split(".")
        target = self.overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
        self.labels[dotted_path] = flag


def state_of(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if root.obj is None:
        root.obj = CliState()
    return root.obj


def settings_of(ctx: typer.Context) -> Settings:
    """The settings for this invocation: flags over environment over .env files over defaults."""
    state = state_of(ctx)
    return load_settings(state.overrides, override_labels=state.labels)


def variant_settings(
    ctx: typer.Context, *, prompts_dir: Path | None, models_file: Path | None, variables: dict[str, str]
) -> Settings:
    """This invocation's settings with another agent configuration over them: a prompts folder, a models file and
    settings as environment variables (what `agentctl eval replay` compares). Raises SettingsError."""
    state = state_of(ctx)
    overrides = copy.deepcopy(state.overrides)
    labels = dict(state.labels)
    if prompts_dir is not None:
        overrides.setdefault("agent", {})["prompts_dir"] = prompts_dir.absolute()
        labels["agent.prompts_dir"] = "--prompts"
    if models_file is not None:
        overrides.setdefault("llm", {})["models_file"] = models_file.absolute()
        labels["llm.models_file"] = "--models"
    return load_settings(overrides, override_labels=labels, environ={**os.environ, **variables})
