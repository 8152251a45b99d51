"""What can be checked of the compose stack without a Docker engine (none runs on these machines): the files
parse, every service is health-checked and pinned, the app migrates then serves, nothing secret is committed,
and the app's configuration as compose assembles it is one that agentctl's own settings loader accepts."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agentctl.cli.config import configuration_reference
from agentctl.config import load_settings
from tests.compose.stack import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    DOCKERFILE,
    ENVIRONMENTS,
    commented_out_variables,
    committed_files,
    compose_stack,
    compose_values,
    interpolate,
    interpolated_names,
    load_yaml,
    read_env_example,
)

SERVICES = {"app", "proxy", "postgres", "redis", "prometheus", "grafana", "cadvisor"}
PINNED_IMAGES = {
    "proxy": re.compile(r"^nginx:\d+\.\d+[\w.-]*$"),
    "postgres": re.compile(r"^pgvector/pgvector:pg16$"),
    "redis": re.compile(r"^redis:\d+\.\d+[\w.-]*$"),
    "prometheus": re.compile(r"^prom/prometheus:v\d+\.\d+\.\d+$"),
    "grafana": re.compile(r"^grafana/grafana:\d+\.\d+\.\d+$"),
    "cadvisor": re.compile(r"^gcr\.io/cadvisor/cadvisor:v\d+\.\d+\.\d+$"),
}
BUILD_TOOLS = {"build-essential", "gcc", "g++", "clang", "cmake", "make", "cargo", "rustc", "git"}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|API_KEY|PRIVATE_KEY|TOKEN)$", re.I)
# The secrets compose must be handed; a variable holding one may only be required or default to nothing.
REQUIRED_SECRETS = ("AGENTCTL_AUTH__JWT_SECRET", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
SECRET_LOOKALIKES = (
    re.compile(r"sk-[A-Za-z0-9_-]{20,}"),  # OpenAI-style keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access keys
    re.compile(r"(?i)(password|secret|api_key|token)[ \t]*[:=][ \t]*['\"]?(?!\$\{)[A-Za-z0-9+/_-]{12,}"),
    re.compile(r"postgres(?:ql)?://[^:\s/]+:(?!\$\{)[^@\s]+@"),  # a URL with a literal password
)


def sample_compose_variables(environment: str = "production") -> dict[str, str]:
    """What an operator puts in compose/.env: the example's values with the secrets filled in."""
    variables = read_env_example(COMPOSE_DIR / ".env.example")
    variables.update(
        AGENTCTL_ENV=environment,
        AGENTCTL_AUTH__JWT_SECRET=secrets.token_urlsafe(48),
        POSTGRES_PASSWORD=secrets.token_hex(16),
        GRAFANA_ADMIN_PASSWORD=secrets.token_hex(16),
        OPENAI_API_KEY="sk-test",
    )
    return variables


def app_environment(variables: dict[str, str]) -> dict[str, str]:
    """The app container's `environment:` after compose's interpolation."""
    return {
        key: interpolate(str(value), variables)
        for key, value in compose_stack()["services"]["app"]["environment"].items()
    }


def test_every_service_is_there_health_checked_and_pinned() -> None:
    services = compose_stack()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {healthcheck['test']}"
        assert {"interval", "timeout", "retries"} <= set(healthcheck), f"{name}: healthcheck timing left to Docker"
    for name, pattern in PINNED_IMAGES.items():
        assert pattern.match(services[name]["image"]), f"{name} image is not pinned: {services[name]['image']}"


def test_app_starts_after_its_dependencies_and_reports_readiness() -> None:
    app = compose_stack()["services"]["app"]
    assert (COMPOSE_FILE.parent / app["build"]["context"] / app["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert {name: dependency["condition"] for name, dependency in app["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    # Readiness (database and Redis answer), not liveness: compose's "healthy" should mean "can serve".
    assert "http://127.0.0.1:8000/health/ready" in " ".join(app["healthcheck"]["test"])
    assert app.get("init") is True, "without an init, SIGTERM during migrate is ignored by the shell as PID 1"


def test_app_runs_migrate_then_serve_with_workers() -> None:
    """The image's command does it; compose must not replace that command with one that skips migrate."""
    app = compose_stack()["services"]["app"]
    command = app.get("command") or dockerfile_command()
    script = command[-1] if isinstance(command, list) else command
    assert re.search(r"agentctl migrate && exec agentctl serve --workers \S+", script), script
    assert "AGENTCTL_SERVER__WORKERS" in app["environment"]


def test_secrets_must_be_supplied_and_are_never_defaulted() -> None:
    stack = compose_stack()
    text = "\n".join(compose_values(stack))
    for name in REQUIRED_SECRETS:
        # ${NAME:?message}: compose refuses to start, naming what is missing, rather than run with a blank secret.
        assert re.search(rf"\$\{{{name}:\?[^}}]+\}}", text), f"{name} is not required"
    for service_name, service in stack["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]+|:-)\}", str(value)), f"{service_name}.{key} = {value!r}"
    with pytest.raises(LookupError, match="AGENTCTL_AUTH__JWT_SECRET"):
        app_environment({**sample_compose_variables(), "AGENTCTL_AUTH__JWT_SECRET": ""})


def test_compose_variables_are_the_ones_env_example_documents() -> None:
    used = {name for value in compose_values() for name in interpolated_names(value)}
    documented = set(read_env_example(COMPOSE_DIR / ".env.example"))
    assert used - documented == set(), "used by docker-compose.yml but missing from compose/.env.example"
    assert documented - used == set(), "in compose/.env.example but used nowhere"


def test_bind_mounts_name_files_that_exist() -> None:
    for name, service in compose_stack()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}, which is not in compose/"


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_app_configuration_is_accepted_by_the_settings_loader(environment: str, tmp_path: Path) -> None:
    """The app container's environment plus compose/env/<environment>.env.example, read the way agentctl reads
    .env.<environment>: no unknown variable, no invalid value, and nothing production would refuse."""
    example = COMPOSE_DIR / "env" / f"{environment}.env.example"
    (tmp_path / f".env.{environment}").write_text(example.read_text())
    environ = app_environment(sample_compose_variables(environment))
    settings = load_settings(environ=environ, env_file_dir=tmp_path)
    assert settings.env == environment
    assert settings.production_problems() == []
    assert settings.redis.url is not None
    assert settings.database.url is not None
    assert settings.server.workers == int(read_env_example(COMPOSE_DIR / ".env.example")["AGENTCTL_SERVER__WORKERS"])
    if environment == "production":
        assert not settings.debug
        assert settings.server.cors_allowed_origins
        assert "*" not in settings.server.cors_allowed_origins


def test_env_examples_hold_no_secret_and_name_only_real_settings() -> None:
    reference = configuration_reference()
    examples = [COMPOSE_DIR / ".env.example", *sorted((COMPOSE_DIR / "env").glob("*.env.example"))]
    assert {path.name for path in examples} >= {f"{environment}.env.example" for environment in ENVIRONMENTS}
    for path in examples:
        values = read_env_example(path)
        for key, value in values.items():
            if SECRET_NAME.search(key):
                assert value == "", f"{path.name}: {key} must be left empty in an example"
        # A variable mentioned in a comment is a suggestion an operator will uncomment: it must exist too.
        for key in {*values, *commented_out_variables(path)}:
            if key.startswith("AGENTCTL_"):
                assert f"`{key}`" in reference, f"{path.name}: {key} is not a setting"


def test_real_env_files_are_ignored_by_git() -> None:
    """The examples are committed; what operators copy them to holds secrets and must never be."""
    candidates = ["compose/.env", *(f"compose/env/{environment}.env" for environment in ENVIRONMENTS)]
    ignored = subprocess.run(
        ["git", "check-ignore", *candidates], cwd=COMPOSE_DIR.parent, capture_output=True, text=True, timeout=30
    ).stdout.split()
    assert sorted(ignored) == sorted(candidates)


def test_no_committed_file_holds_a_secret() -> None:
    files = committed_files(COMPOSE_DIR)
    assert COMPOSE_FILE in files
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in SECRET_LOOKALIKES:
            found = pattern.search(text)
            assert found is None, f"{path.relative_to(COMPOSE_DIR.parent)}: looks like a secret: {found.group(0)!r}"


def test_every_yaml_file_parses() -> None:
    for path in [*COMPOSE_DIR.rglob("*.yml"), *COMPOSE_DIR.rglob("*.yaml")]:
        assert load_yaml(path) is not None, path


# --- the image ---------------------------------------------------------------------------------------------


def dockerfile_stages() -> list[str]:
    """Each stage's text, from its FROM line (comments dropped, continuation lines joined)."""
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return ["FROM" + stage for stage in re.split(r"^FROM", text, flags=re.M)[1:]]


def dockerfile_command() -> list[str]:
    (command,) = re.findall(r"^CMD\s+(.+)$", dockerfile_stages()[-1], flags=re.M)
    return json.loads(command)


def test_image_is_multi_stage_and_runs_as_an_unprivileged_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users, "the final stage never leaves root"
    assert users[-1] not in ("root", "0", "0:0"), users
    # The final stage takes only the built virtualenv from the build stage: no sources, no wheels, no caches.
    assert re.findall(r"^COPY\s+--from=\S+\s+(\S+)", final, flags=re.M) == ["/opt/agentctl"]


def test_no_build_tools_in_the_final_image() -> None:
    final = dockerfile_stages()[-1]
    packages = {
        word
        for command in re.findall(r"(?:apt-get install|apk add)([^;&|]+)", final)
        for word in command.split()
        if not word.startswith("-")
    }
    assert packages & BUILD_TOOLS == set()
    assert not [package for package in packages if package.endswith("-dev")], packages
    assert "build-essential" in dockerfile_stages()[0], "the build stage is where compiling happens"


def test_image_carries_no_secret_and_serves_production_on_all_interfaces() -> None:
    final = dockerfile_stages()[-1]
    for name in re.findall(r"\b([A-Z][A-Z0-9_]*)=", " ".join(re.findall(r"^(?:ENV|ARG)\s+(.+)$", final, re.M))):
        assert not SECRET_NAME.search(name), f"the image sets {name}"
    assert "AGENTCTL_ENV=production" in final
    assert "AGENTCTL_SERVER__HOST=0.0.0.0" in final
    assert re.search(r"^EXPOSE\s+8000\b", final, flags=re.M)


def test_the_files_the_image_copies_make_a_complete_wheel(tmp_path: Path) -> None:
    """Build from exactly what the Dockerfile COPYs (and its .dockerignore lets through): a package directory
    added to the project but not to the image would make a wheel without it."""
    build_stage = dockerfile_stages()[0]
    copied = [
        source
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", build_stage, flags=re.M)
        for source in shlex.split(line)[:-1]
    ]
    allowed = {
        line[1:].rstrip("/")
        for line in (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().split()
        if line.startswith("!")
    }
    assert set(copied) <= allowed, "the Dockerfile copies something its .dockerignore keeps out of the context"
    context = tmp_path / "context"
    for source in copied:
        origin = COMPOSE_DIR.parent / source
        target = context / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(origin.read_bytes())
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("agentctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {name.split("/", 1)[0] for name in names}
    assert {"agentctl", "server"} <= packaged
    assert "agentctl/prompts/system.md" in names
    assert any(name.startswith("agentctl/migrations/") for name in names)
    source_modules = {
        path.relative_to(COMPOSE_DIR.parent).as_posix()
        for package in ("agentctl", "server")
        for path in (COMPOSE_DIR.parent / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert source_modules <= names


def test_clients_reach_the_app_through_the_proxy_with_the_loadtests_nginx_site() -> None:
    """The proxy mounts the site config `agentctl loadtest --replicas` renders (one file for both), fills in only its
    own names, and is the only published way in, so the app scales without a port clash."""
    services = compose_stack()["services"]
    proxy, app = services["proxy"], services["app"]
    mounts = [volume.split(":") for volume in proxy["volumes"]]
    assert [(source, target) for source, target, *_ in mounts] == [
        ("./nginx/agentctl.conf.template", "/etc/nginx/templates/agentctl.conf.template")
    ]
    assert (COMPOSE_FILE.parent / "nginx" / "agentctl.conf.template").is_file()
    assert proxy["environment"]["NGINX_ENVSUBST_FILTER"] == "^AGENTCTL_"
    assert "server app:8000" in proxy["environment"]["AGENTCTL_UPSTREAM_SERVERS"]
    assert proxy["depends_on"] == {"app": {"condition": "service_healthy"}}
    assert "ports" not in app
    assert app["expose"] == ["8000"]
    assert "AGENTCTL_SERVER__TRUSTED_PROXIES" in app["environment"]
