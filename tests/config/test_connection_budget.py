"""`agentctl config check --replicas N`: replicas x workers x pools against the database's max_connections."""

from __future__ import annotations

from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.config import load_settings
from server.database.budget import connection_budget

runner = CliRunner()


def test_the_arithmetic_counts_every_pool_of_every_worker_of_every_replica() -> None:
    settings = load_settings(
        environ={
            "AGENTCTL_SERVER__WORKERS": "2",
            "AGENTCTL_DATABASE__POOL_MAX_SIZE": "8",
            "AGENTCTL_MEMORY__POOL_MAX_SIZE": "3",
        }
    )
    budget = connection_budget(settings, replicas=3, max_connections=200, superuser_reserved=3)
    assert budget.per_worker == 8 + 8 + 3 + 1
    assert budget.servers == 3 * 2 * 20
    assert budget.needed == 120 + 5
    assert budget.fits
    tight = connection_budget(settings, replicas=6, max_connections=200, superuser_reserved=3)
    assert tight.needed == 245
    assert not tight.fits
    # The pool size it suggests does fit.
    suggested = tight.largest_pool_that_fits()
    smaller = load_settings(
        environ={
            "AGENTCTL_SERVER__WORKERS": "2",
            "AGENTCTL_DATABASE__POOL_MAX_SIZE": str(suggested),
            "AGENTCTL_MEMORY__POOL_MAX_SIZE": "3",
        }
    )
    assert connection_budget(smaller, replicas=6, max_connections=200, superuser_reserved=3).fits
    assert not connection_budget(
        load_settings(
            environ={
                "AGENTCTL_SERVER__WORKERS": "2",
                "AGENTCTL_DATABASE__POOL_MAX_SIZE": str(suggested + 1),
                "AGENTCTL_MEMORY__POOL_MAX_SIZE": "3",
            }
        ),
        replicas=6,
        max_connections=200,
        superuser_reserved=3,
    ).fits


def test_memory_off_needs_no_memory_pool() -> None:
    settings = load_settings(environ={"AGENTCTL_MEMORY__ENABLED": "false"})
    assert connection_budget(settings, replicas=1).memory_pool == 0


def test_config_check_prints_the_arithmetic_and_fails_when_it_does_not_fit() -> None:
    env = {"AGENTCTL_SERVER__WORKERS": "2", "COLUMNS": "200"}
    fits = runner.invoke(app, ["config", "check", "--replicas", "1", "--max-connections", "100"], env=env)
    assert fits.exit_code == 0, fits.output
    assert "servers: 1 replicas x 2 workers x 25" in fits.output
    assert "ok: 55 of 97 connections with 1 replicas" in fits.output
    refused = runner.invoke(app, ["config", "check", "--replicas", "4", "--max-connections", "100"], env=env)
    assert refused.exit_code == 1
    assert "205 connections needed, 97 available: lower AGENTCTL_DATABASE__POOL_MAX_SIZE to" in refused.output


def test_config_check_asks_the_database_when_one_is_configured(postgres_server_url: str) -> None:
    result = runner.invoke(
        app, ["config", "check", "--replicas", "2"], env={"DATABASE_URL": postgres_server_url, "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "max_connections from the database" in result.output


def test_config_check_says_when_the_database_cannot_be_asked() -> None:
    result = runner.invoke(
        app, ["config", "check"], env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "could not ask the database its max_connections" in result.output
