"""The Kubernetes manifests (compose/kubernetes/), checked offline: each validates strictly against the official
Kubernetes JSON schemas of two Kubernetes versions (the `kubernetes-validate` package, which ships them), kubectl's
own kustomize renders the whole set when kubectl is installed, and the manifests keep agentctl's contract: the
probes' paths, a grace period longer than the whole stop, migrations in a Job, the nightly eval's command as
agentctl's CLI parses it, both autoscaling metrics, selectors that match, SSE-friendly ingress, secrets only by
reference, and a configuration that agentctl's own settings loader accepts for production."""

from __future__ import annotations

import copy
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.core
import typer.main
import yaml

from agentctl.cli import app as cli_app
from agentctl.config import load_settings
from server.evaluation.report import parse_gate
from server.evaluation.window import parse_window
from tests.compose.stack import COMPOSE_DIR
from tests.support import REPO_ROOT

KUBERNETES_DIR = COMPOSE_DIR / "kubernetes"
KUSTOMIZATION = KUBERNETES_DIR / "kustomization.yaml"
ADAPTER_VALUES = KUBERNETES_DIR / "prometheus-adapter" / "values.yaml"
# The oldest version these manifests need (the preStop sleep action is on by default from 1.30) and a newer one.
KUBERNETES_VERSIONS = ("1.30", "1.33")
STREAMS_METRIC = "agentctl_sse_streams_open"
# Settings that are secrets: they may reach a container only from a Secret, by reference.
SECRET_VARIABLES = {
    "AGENTCTL_AUTH__JWT_SECRET",
    "DATABASE_URL",
    "REDIS_URL",
    "OPENAI_API_KEY",
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "AGENTCTL_API_KEY",
}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|API_KEY|PRIVATE_KEY|TOKEN|_URL)$", re.I)
WORKLOAD_KINDS = {"Deployment", "Job", "CronJob"}


def manifest_files() -> list[Path]:
    return sorted(path for path in KUBERNETES_DIR.glob("*.yaml") if path != KUSTOMIZATION)


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def all_resources() -> list[dict[str, Any]]:
    return [document for path in manifest_files() for document in documents(path)]


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        document
        for document in all_resources()
        if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)
    ]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def workloads() -> list[dict[str, Any]]:
    return [document for document in all_resources() if document["kind"] in WORKLOAD_KINDS]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def server_container() -> dict[str, Any]:
    (container,) = pod_spec(resource("Deployment", "agentctl"))["containers"]
    return container


def config() -> dict[str, str]:
    return resource("ConfigMap", "agentctl-config")["data"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels selectors are checked here"
    return selector["matchLabels"].items() <= labels.items()


def container_port(name_or_number: str | int) -> int:
    for port in server_container()["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            return port["containerPort"]
    raise AssertionError(f"the server container has no port {name_or_number!r}")


# --- the schemas -------------------------------------------------------------------------------------------


def test_the_package_has_the_kubernetes_versions_validated_here() -> None:
    available = {".".join(version.split(".")[:2]) for version in kubernetes_validate.utils.all_versions()}
    assert set(KUBERNETES_VERSIONS) <= available


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_every_manifest_validates_strictly(path: Path, version: str) -> None:
    """Strict: the schema of each kind at that version, with no field it does not define (a typo fails)."""
    found = documents(path)
    assert found, f"{path.name} holds no resource"
    for document in found:
        assert kubernetes_validate.validate(document, version, strict=True) == version


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The check above has teeth: a field the schema does not know is refused, not ignored."""
    deployment = copy.deepcopy(resource("Deployment", "agentctl"))
    pod_spec(deployment)["terminationGracePeriod"] = 80
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == [path.name for path in manifest_files()]
    assert kustomization["namespace"] == resource("Namespace")["metadata"]["name"]
    # Every container names the image "agentctl", which the kustomization points at a registry and release.
    images = {container["image"] for workload in workloads() for container in containers(pod_spec(workload))}
    assert images == {"agentctl"}
    assert [image["name"] for image in kustomization["images"]] == ["agentctl"]


def test_kustomize_renders_every_resource_into_the_namespace() -> None:
    """kubectl's built-in kustomize, offline: the rendered set validates too, in one namespace, with the image
    pinned to a tag."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    resources = [document for document in yaml.safe_load_all(rendered.stdout) if document is not None]
    assert len(resources) == len(all_resources())
    for document in resources:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "agentctl", document["kind"]
        if document["kind"] in WORKLOAD_KINDS:
            for container in containers(pod_spec(document)):
                assert re.fullmatch(r"\S+/agentctl:[\w.-]+", container["image"]), container["image"]


# --- the server ----------------------------------------------------------------------------------------------


def test_probes_ask_the_health_endpoints_on_the_server_port() -> None:
    container = server_container()
    assert container_port("http") == int(config()["AGENTCTL_SERVER__PORT"]) == 8000
    probes = {name: container[name]["httpGet"] for name in ("livenessProbe", "readinessProbe", "startupProbe")}
    # Liveness: the process answers (a database outage must not restart every pod); readiness: it can serve.
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["startupProbe"]["path"] == "/health"
    for probe in probes.values():
        assert container_port(probe["port"]) == 8000


def test_termination_grace_outlasts_the_prestop_sleep_and_the_graceful_shutdown() -> None:
    spec = pod_spec(resource("Deployment", "agentctl"))
    pre_stop = server_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0, "without it, new requests reach a pod that is already shutting down"
    shutdown = float(config()["AGENTCTL_SERVER__GRACEFUL_SHUTDOWN_SECONDS"]) + float(
        config()["AGENTCTL_MEMORY__DRAIN_SECONDS"]
    )
    assert spec["terminationGracePeriodSeconds"] > pre_stop + shutdown


def test_the_server_only_serves_and_waits_for_the_migration_job() -> None:
    deployment = resource("Deployment", "agentctl")
    assert server_container()["command"] == ["agentctl", "serve"]
    (wait,) = pod_spec(deployment)["initContainers"]
    assert "agentctl migrate --check" in " ".join(wait["command"])
    job = resource("Job", "agentctl-migrate")
    (migrate,) = pod_spec(job)["containers"]
    assert migrate["command"] == ["agentctl", "migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    # The init container waits at most as long as the rollout is allowed to take.
    assert deployment["spec"]["progressDeadlineSeconds"] > job["spec"]["activeDeadlineSeconds"]
    # Each command's flags are ones agentctl has.
    assert "--check" in cli_options("migrate")


def test_rolling_update_keeps_capacity() -> None:
    strategy = resource("Deployment", "agentctl")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_resources_are_requested_and_workers_match_the_cpu_limit() -> None:
    for workload in workloads():
        for container in containers(pod_spec(workload)):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
            assert "memory" in container["resources"]["limits"], container["name"]
    limits = server_container()["resources"]["limits"]
    assert int(limits["cpu"]) == int(config()["AGENTCTL_SERVER__WORKERS"])


def test_pods_run_unprivileged_on_a_read_only_root_with_writable_scratch() -> None:
    data_dir = config()["AGENTCTL_DATA_DIR"]
    service_account = resource("ServiceAccount", "agentctl")
    assert service_account["automountServiceAccountToken"] is False
    assert resource("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads():
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] == service_account["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        empty_dirs = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert mounts.get(data_dir) in empty_dirs, f"{container['name']}: {data_dir} is not writable"
            assert mounts.get("/tmp") in empty_dirs, f"{container['name']}: /tmp is not writable"


def test_the_configuration_is_one_agentctl_accepts_for_production(tmp_path: Path) -> None:
    """The ConfigMap plus the Secret's keys, through agentctl's own settings loader: no unknown variable, no
    invalid value, nothing production refuses."""
    environ = {
        **config(),
        "AGENTCTL_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "DATABASE_URL": "postgresql://agent:password@postgres:5432/agent",
        "REDIS_URL": "redis://redis:6379/0",
        "OPENAI_API_KEY": "sk-test",
    }
    settings = load_settings(environ=environ, env_file_dir=tmp_path)
    assert settings.env == "production"
    assert settings.production_problems() == []
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == container_port("http")
    assert str(settings.data_dir) == config()["AGENTCTL_DATA_DIR"]
    assert settings.server.cors_allowed_origins
    assert "*" not in settings.server.cors_allowed_origins


# --- the nightly eval ------------------------------------------------------------------------------------------


def cli_options(command: str) -> set[str]:
    """The option names of an agentctl command, as its parser knows them."""
    group = typer.main.get_command(cli_app)
    assert isinstance(group, typer.core.TyperGroup)
    return {option for parameter in group.commands[command].params for option in parameter.opts}


def test_the_nightly_eval_runs_agentctl_eval_over_the_last_day_with_a_gate() -> None:
    cronjob = resource("CronJob", "agentctl-eval")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = pod_spec(cronjob)["containers"]
    command = container["command"]
    assert command[:2] == ["agentctl", "eval"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert set(options) <= cli_options("eval")
    assert options["--since"] == "1d"
    window = parse_window(options["--since"], None)
    assert (window.until - window.since).days == 1
    metrics = {path.stem for path in (REPO_ROOT / "prompts" / "evals").glob("*.md")}
    assert parse_gate(options["--fail-under"], metrics), "the eval gates nothing"
    # The judge's key and the database, by reference.
    referenced = {entry["name"] for entry in container["env"] if "secretKeyRef" in entry.get("valueFrom", {})}
    assert {"DATABASE_URL", "OPENAI_API_KEY"} <= referenced


# --- scaling, disruption, traffic --------------------------------------------------------------------------


def test_hpa_scales_the_deployment_on_cpu_and_on_open_streams() -> None:
    hpa = resource("HorizontalPodAutoscaler", "agentctl")
    deployment = resource("Deployment", "agentctl")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "agentctl")
    assert "replicas" not in deployment["spec"], "a replica count here would undo the HPA's on every apply"
    assert hpa["spec"]["minReplicas"] >= 2
    by_type = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Resource"]["resource"]["target"]["type"] == "Utilization"
    assert by_type["Pods"]["pods"]["metric"]["name"] == STREAMS_METRIC
    assert by_type["Pods"]["pods"]["target"]["type"] == "AverageValue"


def test_the_adapter_rule_serves_the_streams_metric_the_server_exports() -> None:
    assert f'"{STREAMS_METRIC}"' in (REPO_ROOT / "server" / "observability" / "metrics.py").read_text()
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert rule["seriesQuery"].startswith(STREAMS_METRIC + "{")
    assert rule["name"]["as"] == STREAMS_METRIC
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    annotations = resource("Deployment", "agentctl")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container_port(int(annotations["prometheus.io/port"])) == 8000


def test_the_pdb_and_the_service_select_the_server_pods_only() -> None:
    deployment = resource("Deployment", "agentctl")
    labels = pod_labels(deployment)
    assert selects(deployment["spec"]["selector"], labels)
    pdb = resource("PodDisruptionBudget", "agentctl")
    assert selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1
    service = resource("Service", "agentctl")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    # Neither counts nor routes to the Jobs' pods.
    for job in (resource("Job", "agentctl-migrate"), resource("CronJob", "agentctl-eval")):
        assert not selects(pdb["spec"]["selector"], pod_labels(job))
        assert not service["spec"]["selector"].items() <= pod_labels(job).items()


def test_service_and_ingress_reach_the_container_port() -> None:
    service = resource("Service", "agentctl")
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == 8000
    ingress = resource("Ingress", "agentctl")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends
    for backend in backends:
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"].get("name", port["name"]) == port["name"]
        assert backend["port"].get("number", port["port"]) == port["port"]


def test_ingress_lets_server_sent_events_stream() -> None:
    annotations = resource("Ingress", "agentctl")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-buffering"] == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) >= 300, f"{timeout}: streams last minutes"


def test_network_policy_admits_only_the_ingress_controller_and_prometheus() -> None:
    policy = resource("NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for workload in workloads():
        assert selects(policy["spec"]["podSelector"], pod_labels(workload)), workload["metadata"]["name"]
    (rule,) = policy["spec"]["ingress"]
    assert [container_port(port["port"]) for port in rule["ports"]] == [8000]
    namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}
    assert namespaces == {"ingress-nginx", "monitoring"}
    egress_ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert egress_ports == {53, 5432, 6379, 443}


# --- secrets -------------------------------------------------------------------------------------------------


def test_secrets_come_only_from_a_secret_by_reference() -> None:
    assert "Secret" not in {document["kind"] for document in all_resources()}, "a Secret's values are never committed"
    assert not {key for key in config() if key in SECRET_VARIABLES or SECRET_NAME.search(key)}
    referenced = set()
    for workload in workloads():
        for container in containers(pod_spec(workload)):
            for source in container.get("envFrom", []):
                assert {"configMapRef", "secretRef"} & set(source), source
            for entry in container.get("env", []):
                if entry["name"] in SECRET_VARIABLES or SECRET_NAME.search(entry["name"]):
                    assert "value" not in entry, f"{container['name']}: {entry['name']} has a value"
                    reference = entry["valueFrom"]["secretKeyRef"]
                    assert reference["name"] == "agentctl-secrets"
                    referenced.add(reference["key"])
    server_env = {entry["name"] for entry in server_container()["env"]}
    assert {"AGENTCTL_AUTH__JWT_SECRET", "DATABASE_URL", "REDIS_URL"} <= server_env
    assert referenced <= SECRET_VARIABLES
    # The TLS certificate, too, is a Secret named by reference.
    assert all(entry["secretName"] for entry in resource("Ingress", "agentctl")["spec"]["tls"])
