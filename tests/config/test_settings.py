"""The config core: precedence, provenance, validation, secrets, production refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.config import Settings, SettingsError, load_settings

runner = CliRunner()


def write(path: Path, text: str) -> None:
    path.write_text(text)


def test_precedence_flag_over_environment_over_env_files_over_default(workdir: Path) -> None:
    write(workdir / ".env", "AGENTCTL_SERVER__PORT=7001\nAGENTCTL_SERVER__HOST=10.0.0.1\nAGENTCTL_DEBUG=true\n")
    write(workdir / ".env.staging", "AGENTCTL_SERVER__PORT=7002\nAGENTCTL_SERVER__HOST=10.0.0.2\n")
    environ = {"AGENTCTL_ENV": "staging", "AGENTCTL_SERVER__PORT": "7003"}

    from_files = load_settings(environ={"AGENTCTL_ENV": "staging"})
    assert from_files.server.port == 7002
    assert from_files.source_of("server.port") == ".env.staging"
    assert from_files.debug is True
    assert from_files.source_of("debug") == ".env"

    from_environment = load_settings(environ=environ)
    assert from_environment.server.port == 7003
    assert from_environment.source_of("server.port") == "environment AGENTCTL_SERVER__PORT"
    assert from_environment.server.host == "10.0.0.2"

    from_flag = load_settings({"server": {"port": 7004}}, override_labels={"server.port": "--port"}, environ=environ)
    assert from_flag.server.port == 7004
    assert from_flag.source_of("server.port") == "flag --port"

    (workdir / ".env").unlink()
    defaults = load_settings(environ={})
    assert defaults.server.port == 8000
    assert defaults.source_of("server.port") == "default"
    assert defaults.env == "development"


def test_environment_name_picks_its_env_file(workdir: Path) -> None:
    write(workdir / ".env.production", "AGENTCTL_SERVER__WORKERS=4\n")
    write(workdir / ".env.test", "AGENTCTL_SERVER__WORKERS=2\n")
    assert load_settings(environ={"AGENTCTL_ENV": "test"}).server.workers == 2
    assert load_settings(environ={"AGENTCTL_ENV": "production"}).server.workers == 4
    assert load_settings({"env": "test"}, environ={"AGENTCTL_ENV": "production"}).server.workers == 2


def test_conventional_variables_and_prefixed_ones(workdir: Path) -> None:
    settings = load_settings(
        environ={
            "DATABASE_URL": "postgresql://app:pw@db:5432/agent",
            "REDIS_URL": "redis://cache:6379/0",
            "OPENAI_API_KEY": "sk-test",
        }
    )
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == "postgresql://app:pw@db:5432/agent"
    assert settings.source_of("database.url") == "environment DATABASE_URL"
    assert settings.redis.url is not None
    assert settings.llm.api_key is not None
    assert settings.llm.api_key.get_secret_value() == "sk-test"
    prefixed_wins = load_settings(
        environ={"DATABASE_URL": "postgresql://a@x/one", "AGENTCTL_DATABASE__URL": "postgresql://a@x/two"}
    )
    assert prefixed_wins.database.url is not None
    assert prefixed_wins.database.url.get_secret_value().endswith("/two")


def test_conventional_variable_in_env_file(workdir: Path) -> None:
    write(workdir / ".env", "DATABASE_URL=postgresql://u:pw@filehost/db\n")
    settings = load_settings(environ={})
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == "postgresql://u:pw@filehost/db"
    assert settings.source_of("database.url") == ".env"


def test_comma_separated_cors_origins(workdir: Path) -> None:
    settings = load_settings(environ={"AGENTCTL_SERVER__CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert settings.server.cors_allowed_origins == ["https://a.example", "https://b.example"]


def test_each_invalid_value_gets_its_own_line(workdir: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            environ={"AGENTCTL_SERVER__PORT": "eighty", "AGENTCTL_ENV": "prod", "AGENTCTL_DATABASE__POOL_MAX_SIZE": "0"}
        )
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(line.startswith("AGENTCTL_SERVER__PORT") and "'eighty'" in line for line in problems)
    assert any(line.startswith("AGENTCTL_ENV") and "production" in line for line in problems)
    assert any(line.startswith("AGENTCTL_DATABASE__POOL_MAX_SIZE") for line in problems)


def test_unknown_agentctl_variable_is_an_error_not_ignored(workdir: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"AGENTCTL_SERVR__PORT": "9000"})
    assert caught.value.problems == [
        "AGENTCTL_SERVR__PORT (environment): unknown setting; `agentctl config show` lists them all"
    ]


def test_invalid_settings_exit_2_with_one_line_per_field(workdir: Path) -> None:
    result = runner.invoke(
        app, ["config", "show"], env={"AGENTCTL_SERVER__PORT": "99999", "AGENTCTL_SERVER__WORKERS": "none"}
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("agentctl: AGENTCTL_SERVER__") for line in lines)
    assert "Traceback" not in result.output


def test_config_show_masks_secrets_and_names_sources(workdir: Path) -> None:
    secret = "s3cr3t-signing-key-that-is-long-enough-for-prod"
    result = runner.invoke(
        app,
        ["--env", "staging", "config", "show", "--json"],
        env={
            "AGENTCTL_AUTH__JWT_SECRET": secret,
            "DATABASE_URL": "postgresql://app:hunter2@db.internal:5432/agent",
            "OPENAI_API_KEY": "sk-live-abcdef",
        },
    )
    assert result.exit_code == 0, result.output
    for leaked in (secret, "hunter2", "sk-live-abcdef"):
        assert leaked not in result.output
    import json

    shown = json.loads(result.stdout)
    assert shown["auth.jwt_secret"] == {"value": "********", "source": "environment AGENTCTL_AUTH__JWT_SECRET"}
    assert shown["database.url"]["value"] == "postgresql://app:***@db.internal:5432/agent"
    assert shown["env"] == {"value": "staging", "source": "flag --env"}
    assert shown["server.port"] == {"value": "8000", "source": "default"}

    table = runner.invoke(app, ["config", "show"], env={"OPENAI_API_KEY": "sk-live-abcdef"})
    assert table.exit_code == 0
    assert "sk-live-abcdef" not in table.output
    assert "llm.api_key" in table.output


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _fields(annotation, f"{prefix}{name}.")
        else:
            found.append((f"{prefix}{name}", field.description))
    return found


def test_every_setting_has_help_text() -> None:
    undocumented = [name for name, description in _fields(Settings) if not description]
    assert undocumented == []


def test_readme_configuration_table_is_generated_from_the_settings() -> None:
    from agentctl.cli.config import configuration_reference

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert configuration_reference() in readme, "run `agentctl config reference` and paste it into README.md"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AGENTCTL_AUTH__JWT_SECRET": ""}, "AGENTCTL_AUTH__JWT_SECRET must be set to at least 32 bytes"),
        ({"AGENTCTL_AUTH__JWT_SECRET": "too-short"}, "AGENTCTL_AUTH__JWT_SECRET must be set to at least 32 bytes"),
        ({"AGENTCTL_SERVER__CORS_ALLOWED_ORIGINS": "*"}, "AGENTCTL_SERVER__CORS_ALLOWED_ORIGINS must list explicit"),
        ({"AGENTCTL_DEBUG": "true"}, "AGENTCTL_DEBUG must be false in production"),
    ],
)
def test_production_refuses_unsafe_settings(workdir: Path, environ: dict[str, str], expected: str) -> None:
    safe = {"AGENTCTL_AUTH__JWT_SECRET": "x" * 48, "AGENTCTL_ENV": "production", "DATABASE_URL": "postgresql:///none"}
    result = runner.invoke(app, ["serve"], env={**safe, **environ})
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_production_settings_that_are_safe_have_no_problems(workdir: Path) -> None:
    settings = load_settings(
        environ={
            "AGENTCTL_ENV": "production",
            "AGENTCTL_AUTH__JWT_SECRET": "k" * 32,
            "AGENTCTL_SERVER__CORS_ALLOWED_ORIGINS": "https://app.example",
        }
    )
    assert settings.production_problems() == []


def test_app_factory_refuses_unsafe_production_settings() -> None:
    from server.app import create_app

    with pytest.raises(SettingsError):
        create_app(Settings(env="production"))
