"""What can be checked of the container files without a Docker engine (none runs on these machines)."""

from __future__ import annotations

import yaml

from tests.support import REPO_ROOT

COMPOSE_DIR = REPO_ROOT / "compose"


def test_compose_stack_runs_migrate_then_serve_on_pgvector_with_a_supplied_secret() -> None:
    stack = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    services = stack["services"]
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    assert {"app", "postgres", "redis"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    app = services["app"]
    assert "/health/ready" in " ".join(app["healthcheck"]["test"])
    # The JWT secret must be supplied: compose refuses to start without it (${VAR:?message}).
    assert app["environment"]["AGENTCTL_AUTH__JWT_SECRET"].startswith("${AGENTCTL_AUTH__JWT_SECRET:?")


def test_image_migrates_then_serves_as_a_non_root_user() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert "USER agentctl" in dockerfile
    assert "agentctl migrate && exec agentctl serve" in dockerfile
    final_stage = dockerfile.rsplit("FROM ", 1)[1]
    assert "build-essential" not in final_stage
