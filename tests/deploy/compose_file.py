"""Reading deploy/compose.yaml the way Docker Compose does, for tests that cannot run it.

Containers cannot run on Keel's development machines, so the tests read the compose file
instead: :func:`keel_services` are its services built from Keel's image, with YAML merge
keys applied (PyYAML does that), and :func:`interpolate` resolves ``${VAR}`` as Compose
would from a given ``.env``. :func:`keel_variables` is every environment variable Keel
reads, from ``service_kit/config.py`` itself, so a misspelt variable cannot pass.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
DOCKERFILE = ROOT / "Dockerfile"

#: The standard AWS credentials the file service's S3 client reads (docs/configuration.md).
AWS_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})

_REFERENCE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def load_compose() -> dict[str, Any]:
    """deploy/compose.yaml as Compose reads it (merge keys applied, no interpolation)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def keel_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run Keel's image (built from the repository's Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == "Dockerfile"
    }


def interpolate(text: str, dotenv: Mapping[str, str]) -> str:
    """``text`` with ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` resolved from
    ``dotenv`` and ``$$`` made ``$``; a required variable missing raises ``KeyError``."""

    def resolve(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        value = dotenv.get(name)
        if value is None or (value == "" and op.startswith(":")):
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg if op.endswith("-") else ""
        return value

    return _REFERENCE.sub(resolve, text)


def service_environment(service: Mapping[str, Any], dotenv: Mapping[str, str]) -> dict[str, str]:
    """A service's ``environment`` (the mapping form) interpolated from ``dotenv``."""
    return {
        name: interpolate(str(value), dotenv)
        for name, value in (service.get("environment") or {}).items()
    }


def image_environment() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's final stage: the listening addresses, the data dir."""
    final = DOCKERFILE.read_text().replace("\\\n", " ").rsplit("\nFROM ", 1)[1]
    lines = [line for line in final.splitlines() if line.startswith("ENV ")]
    return dict(pair for line in lines for pair in re.findall(r"(\w+)=(\S+)", line))


def keel_variables() -> frozenset[str]:
    """Every variable ``load_settings`` reads: the names it passes to ``get(...)`` or
    ``env.get(...)`` in service_kit/config.py, and the AWS credentials."""
    tree = ast.parse((ROOT / "service_kit" / "config.py").read_text())
    names = set(AWS_VARIABLES)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        function, first = node.func, node.args[0]
        is_get = (isinstance(function, ast.Name) and function.id == "get") or (
            isinstance(function, ast.Attribute) and function.attr == "get"
        )
        if is_get and isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
    return frozenset(names)
