"""The Kubernetes manifests (deploy/k8s/): valid for the pinned Kubernetes version, and
consistent with what Keel's processes are — the health names they serve, the variables
they read, the drain they take, the pods their Services, budgets, autoscaler and network
policies point at.

Nothing here needs a cluster. The overlay is rendered by :func:`render`, which implements
the few kustomize fields the manifests use (and refuses any other); when ``kubectl`` or
``kustomize`` is installed, a test checks that it renders exactly the same resources.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from keel.channels.v1 import channels_pb2
from keel.events.v1 import events_pb2
from keel.files.v1 import files_pb2
from keel.notifications.v1 import notifications_pb2
from keel.tenants.v1 import tenants_pb2

from keel_app.processes import check_cluster_settings
from service_kit.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"

#: The Kubernetes version the manifests are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.32"

#: The gRPC services each ``keel serve`` process registers with grpc.health.v1.
HEALTH_NAMES: dict[str, set[str]] = {
    "tenant-service": {tenants_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name},
    "gateway": {
        channels_pb2.DESCRIPTOR.services_by_name["ChannelService"].full_name,
        events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    },
    "notification-service": {
        notifications_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name
    },
    "file-service": {files_pb2.DESCRIPTOR.services_by_name["FileService"].full_name},
}

#: Paths the bridge answers with 200 over plain HTTP (gateway_bridge/bridge/http.py).
BRIDGE_HTTP_PATHS = {"/healthz", "/keel.js", "/demo"}

#: Variables read by libraries Keel uses, which docs/configuration.md names in its text.
LIBRARY_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

#: Labels of pods that are not Keel's but that the network policies let in.
CLIENT_LABELS = {"keel/api-client": "true"}

#: After SIGTERM a process drains its job workers, then its gRPC server (each up to
#: KEEL_SHUTDOWN_GRACE_SECONDS), then gives leftover tasks 3 s (keel_app/processes.py).
LEFTOVER_TASKS_SECONDS = 3

Resource = dict[str, Any]


# -- rendering --------------------------------------------------------------------------------

KUSTOMIZE_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "patches",
    "secretGenerator",
}
CLUSTER_SCOPED = {"Namespace"}


@functools.cache
def render(directory: Path) -> tuple[Resource, ...]:
    """The resources ``kustomize build directory`` prints, for the fields Keel's manifests
    use; a kustomization using any other field fails here rather than rendering wrongly."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"render() does not implement {sorted(unknown)}"
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += copy.deepcopy(list(render(path.resolve())))
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    resources += [
        _generated_secret(directory, spec) for spec in kustomization.get("secretGenerator", [])
    ]
    for patch in kustomization.get("patches", []):
        _apply_patch(resources, yaml.safe_load((directory / patch["path"]).read_text()))
    for resource in resources:
        _apply_transformers(resource, kustomization)
    return tuple(resources)


def _generated_secret(directory: Path, spec: dict[str, Any]) -> Resource:
    assert set(spec) <= {"name", "envs", "options"}, spec
    assert spec.get("options") == {"disableNameSuffixHash": True}, "the hash suffix is not emulated"
    data: dict[str, str] = {}
    for env_file in spec["envs"]:
        for line in (directory / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                data[key] = base64.b64encode(value.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec["name"]},
        "type": "Opaque",
        "data": data,
    }


def _apply_patch(resources: list[Resource], patch: Resource) -> None:
    """A strategic-merge patch, for what Keel's patches touch: maps, and lists of maps
    merged by ``name`` (containers, env, ports)."""
    target = find(resources, patch["kind"], patch["metadata"]["name"])
    merged = _merge(target, patch)
    target.clear()
    target.update(merged)


def _merge(into: Any, patch: Any) -> Any:
    if isinstance(into, dict) and isinstance(patch, dict):
        result = dict(into)
        for key, value in patch.items():
            result[key] = _merge(into[key], value) if key in into else value
        return result
    if (
        isinstance(into, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in into + patch)
    ):
        by_name = {item["name"]: item for item in into}
        for item in patch:
            by_name[item["name"]] = _merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def _apply_transformers(resource: Resource, kustomization: dict[str, Any]) -> None:
    metadata = resource["metadata"]
    if "namespace" in kustomization and resource["kind"] not in CLUSTER_SCOPED:
        metadata["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels", []):
        assert set(entry) == {"pairs"}, "only labels on metadata are emulated"
        metadata.setdefault("labels", {}).update(entry["pairs"])
    for entry in kustomization.get("replicas", []):
        if resource["kind"] == "Deployment" and metadata["name"] == entry["name"]:
            resource["spec"]["replicas"] = entry["count"]
    for container in containers(resource):
        for image in kustomization.get("images", []):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def find(resources: tuple[Resource, ...] | list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def of_kind(kind: str, directory: Path = OVERLAY) -> list[Resource]:
    return [r for r in render(directory) if r["kind"] == kind]


def containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return list(pod.get("containers", []))


def pod_labels(resource: Resource) -> dict[str, str]:
    return dict(resource["spec"]["template"]["metadata"]["labels"])


def workloads() -> list[Resource]:
    return of_kind("Deployment") + of_kind("Job")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def pods_selected(selector: dict[str, Any]) -> list[str]:
    return [w["metadata"]["name"] for w in workloads() if selects(selector, pod_labels(w))]


def process_of(deployment: Resource) -> str:
    [container] = containers(deployment)
    assert container["args"][0] == "serve"
    return str(container["args"][1])


def config_map() -> dict[str, str]:
    return dict(find(render(OVERLAY), "ConfigMap", "keel-config")["data"])


def environment(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The variables ``container`` starts with, its secret keys taken from ``secrets``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= dict(find(render(OVERLAY), "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif ref := variable["valueFrom"].get("secretKeyRef"):
            if ref["key"] in secrets:
                env[variable["name"]] = secrets[ref["key"]]
        else:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[variable["name"]] = find(render(OVERLAY), "ConfigMap", ref["name"])["data"][
                ref["key"]
            ]
    return env


def example_secrets() -> dict[str, str]:
    secret = find(render(OVERLAY), "Secret", "keel-secrets")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def valid_secrets() -> dict[str, str]:
    """Secrets of the shape Keel accepts, in place of the example's placeholders."""
    return {
        "KEEL_ADMIN_TOKEN": "a" * 32,
        "KEEL_PEER_TOKEN": "p" * 32,
        "KEEL_TOKEN_SECRET": "s" * 32,
        "DATABASE_URL": "postgresql://keel:password@postgres:5432/keel",
        "REDIS_URL": "redis://redis:6379/0",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }


def known_variables() -> set[str]:
    """Every variable in docs/configuration.md's tables, but those of tests and benchmarks."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    keel_part = text.split("## Settings of the tests and benchmarks")[0]
    names = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", keel_part, flags=re.MULTILINE))
    assert {"DATABASE_URL", "KEEL_GRPC_ADDR", "KEEL_SHUTDOWN_GRACE_SECONDS"} <= names
    return names


# -- validity ---------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any connection attempt: the schemas must come from the installed package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_resource_is_valid_for_the_pinned_kubernetes_version(
    directory: Path, no_network: None
) -> None:
    problems = []
    for resource in render(directory):
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            problems.append(
                f"{resource['kind']}/{resource['metadata']['name']}: {where}: {exc.message}"
            )
    assert problems == []


def test_the_overlay_renders_as_kustomize_renders_it(tmp_path: Path) -> None:
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(OVERLAY)]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(OVERLAY)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed; render() alone is checked")
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    rendered = [doc for doc in yaml.safe_load_all(output) if doc]

    def key(resource: Resource) -> str:
        return f"{resource['kind']}/{resource['metadata']['name']}"

    def decoded(resource: Resource) -> Resource:
        """kustomize wraps long base64 values; compare the bytes."""
        if resource["kind"] != "Secret":
            return resource
        data = {k: base64.b64decode(v) for k, v in resource["data"].items()}
        return resource | {"data": data}

    expected = sorted(map(decoded, render(OVERLAY)), key=key)
    assert sorted(map(decoded, rendered), key=key) == expected


# -- processes and their health --------------------------------------------------------------


def test_there_is_one_deployment_per_keel_process() -> None:
    processes = sorted(process_of(d) for d in of_kind("Deployment"))
    assert processes == [
        "bridge",
        "file-service",
        "gateway",
        "notification-service",
        "tenant-service",
    ]


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_grpc_processes_are_probed_over_grpc_health_with_a_service_they_serve(probe: str) -> None:
    for deployment in of_kind("Deployment"):
        process = process_of(deployment)
        if process == "bridge":
            continue
        [container] = containers(deployment)
        grpc = container[probe]["grpc"]
        assert grpc["service"] in HEALTH_NAMES[process], (process, probe)
        grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
        assert grpc["port"] == grpc_port == int(config_map()["KEEL_GRPC_ADDR"].rpartition(":")[2])


def test_bridges_are_ready_only_while_healthz_is_and_alive_while_they_answer_http() -> None:
    [container] = containers(find(render(OVERLAY), "Deployment", "keel-bridge"))
    ws_port = int(config_map()["KEEL_WS_ADDR"].rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] in BRIDGE_HTTP_PATHS
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == ws_port


def test_termination_grace_covers_the_pre_stop_pause_and_the_configured_drain() -> None:
    drain = float(config_map()["KEEL_SHUTDOWN_GRACE_SECONDS"])
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause > 0, "without a pause, new connections still arrive during the drain"
        needed = pause + 2 * drain + LEFTOVER_TASKS_SECONDS
        assert pod["terminationGracePeriodSeconds"] > needed, deployment["metadata"]["name"]


# -- configuration ----------------------------------------------------------------------------


def test_every_variable_given_to_a_keel_container_is_one_keel_reads() -> None:
    known = known_variables()
    documentation = (ROOT / "docs" / "configuration.md").read_text()
    assert all(name in documentation for name in LIBRARY_VARIABLES)
    for workload in workloads():
        for container in containers(workload):
            names = set(environment(container, valid_secrets()))
            names |= {v["name"] for v in container.get("env", [])}
            assert names - known - LIBRARY_VARIABLES == set(), workload["metadata"]["name"]


def test_every_secret_and_config_key_referenced_exists_or_is_optional() -> None:
    secret_keys = set(example_secrets())
    assert secret_keys == set(valid_secrets())
    for workload in workloads():
        for container in containers(workload):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["name"] == "keel-secrets"
                    assert ref["key"] in secret_keys, (workload["metadata"]["name"], ref)
            environment(container, valid_secrets())  # config map keys resolve


def test_each_process_gets_every_setting_it_requires() -> None:
    for deployment in of_kind("Deployment"):
        [container] = containers(deployment)
        settings = load_settings(environment(container, valid_secrets()))
        check_cluster_settings(process_of(deployment), settings)


def test_the_bridge_holds_neither_the_database_nor_the_operator_token() -> None:
    [container] = containers(find(render(OVERLAY), "Deployment", "keel-bridge"))
    assert {"DATABASE_URL", "KEEL_ADMIN_TOKEN"}.isdisjoint(environment(container, valid_secrets()))


def test_pods_started_with_the_example_secrets_refuse_to_start() -> None:
    for deployment in of_kind("Deployment"):
        [container] = containers(deployment)
        with pytest.raises(ConfigError) as refused:
            load_settings(environment(container, example_secrets()))
        assert "KEEL_TOKEN_SECRET" in str(refused.value) or "KEEL_PEER_TOKEN" in str(refused.value)


def test_the_addresses_in_the_config_are_services_of_the_right_process() -> None:
    expected = {
        "KEEL_TENANT_SERVICE_ADDR": "tenant-service",
        "KEEL_GATEWAY_ADDR": "gateway",
        "KEEL_NOTIFICATION_SERVICE_ADDR": "notification-service",
    }
    for variable, process in expected.items():
        host, _, port = config_map()[variable].rpartition(":")
        service = find(render(OVERLAY), "Service", host)
        assert service["spec"]["clusterIP"] == "None", "gRPC needs per-pod addresses"
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        selected = pods_selected({"matchLabels": service["spec"]["selector"]})
        assert selected == [f"keel-{process}"], variable


def test_the_example_overlay_sets_image_replicas_and_public_hosts() -> None:
    for workload in workloads():
        for container in containers(workload):
            assert container["image"] == "registry.example.com/keel:0.1.0"
    assert find(render(OVERLAY), "Deployment", "keel-gateway")["spec"]["replicas"] == 3
    assert config_map()["KEEL_PUBLIC_URL"] == "https://chat.example.com"
    hosts = {rule["host"] for rule in of_kind("Ingress")[0]["spec"]["rules"]}
    assert hosts == {"chat.example.com", "files.example.com"}
    assert all(
        r["metadata"].get("namespace") == "keel"
        for r in render(OVERLAY)
        if r["kind"] != "Namespace"
    )


# -- what points at pods ----------------------------------------------------------------------


def test_services_select_pods_that_have_their_target_ports() -> None:
    for service in of_kind("Service"):
        [name] = pods_selected({"matchLabels": service["spec"]["selector"]})
        [container] = containers(find(render(OVERLAY), "Deployment", name))
        port_names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)


def test_every_disruption_budget_covers_exactly_one_deployment() -> None:
    budgets = of_kind("PodDisruptionBudget")
    covered = [pods_selected(b["spec"]["selector"]) for b in budgets]
    assert all(len(names) == 1 for names in covered), covered
    assert sorted(n for [n] in covered) == sorted(
        d["metadata"]["name"] for d in of_kind("Deployment")
    )


def test_the_autoscaler_scales_the_bridges_on_requested_resources() -> None:
    [autoscaler] = of_kind("HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "keel-bridge")
    bridge = find(render(OVERLAY), "Deployment", target["name"])
    assert process_of(bridge) == "bridge"
    assert "replicas" not in bridge["spec"], "an apply would undo the autoscaler's count"
    [container] = containers(bridge)
    for metric in autoscaler["spec"]["metrics"]:
        assert metric["resource"]["name"] in container["resources"]["requests"]


def test_network_policies_select_keel_pods_and_open_only_their_ports() -> None:
    for policy in of_kind("NetworkPolicy"):
        name, spec = policy["metadata"]["name"], policy["spec"]
        targets = pods_selected(spec["podSelector"])
        assert targets, f"{name} selects no pod"
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                selector = peer.get("podSelector")
                if selector is not None and selector.get("matchLabels") != CLIENT_LABELS:
                    assert pods_selected(selector), (name, peer)
            opened = {p["port"] for p in rule["ports"]}
            for deployment in (
                d for d in of_kind("Deployment") if d["metadata"]["name"] in targets
            ):
                [container] = containers(deployment)
                assert opened <= {p["containerPort"] for p in container["ports"]}, (
                    name,
                    deployment,
                )


def test_every_keel_pod_is_behind_the_default_deny_policy() -> None:
    deny = find(render(OVERLAY), "NetworkPolicy", "keel-default-deny-ingress")
    assert "ingress" not in deny["spec"] and deny["spec"]["policyTypes"] == ["Ingress"]
    assert sorted(pods_selected(deny["spec"]["podSelector"])) == sorted(
        w["metadata"]["name"] for w in workloads()
    )


def test_containers_run_unprivileged_with_a_read_only_root_and_bounded_memory() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]


def test_the_migration_job_runs_keel_migrate_with_only_the_database_secret() -> None:
    [job] = of_kind("Job")
    [container] = containers(job)
    assert container["args"] == ["migrate"]
    secret_keys = {
        v["valueFrom"]["secretKeyRef"]["key"]
        for v in container["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert secret_keys == {"DATABASE_URL"}
