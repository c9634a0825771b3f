"""The files an operator deploys, read as Docker Compose and Docker would: the source of tests/topology.py.

``.env.example`` (the variables; :func:`fill_secrets` gives each ``change-me`` a fresh value),
``docker-compose.yml`` (each service's environment, command, ports and healthcheck, interpolated as
Compose does), the ``Dockerfile`` (a stage's ``ENV``, ``WORKDIR`` and the project tree it copies) and
``docker/postgres-init.sql`` (the databases it creates).
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
POSTGRES_INIT = REPO / "docker" / "postgres-init.sql"


def env_example() -> dict[str, str]:
    """``.env.example`` as name -> value."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def fill_secrets(example: Mapping[str, str]) -> dict[str, str]:
    """The example's values with each ``change-me`` replaced by a fresh secret."""
    from cryptography.fernet import Fernet

    out = {}
    for name, value in example.items():
        if value != "change-me":
            out[name] = value
        elif "FERNET" in name:
            out[name] = Fernet.generate_key().decode()
        else:
            out[name] = secrets.token_hex(24)
    return out


_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``${VAR}``, ``$VAR``, ``${VAR:-default}``, ``${VAR:?error}`` (and without ``:``)."""

    def one(m: re.Match) -> str:
        if m[1]:
            return "$"
        name, op, arg = m[2] or m[5], m[3], m[4] or ""
        value = values.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if empty else value
        if op in (":?", "?"):
            if empty:
                raise KeyError(f"compose needs {name}: {arg}")
            return value
        return value or ""

    return _VARIABLE.sub(one, text)


def _interpolate_tree(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, values)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, values) for v in node]
    return node


def compose(values: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml, parsed (anchors and merge keys resolved), interpolated with ``values`` if given."""
    tree = yaml.safe_load(COMPOSE_FILE.read_text())
    return tree if values is None else _interpolate_tree(tree, values)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def container_ports(service: Mapping[str, Any]) -> list[int]:
    """The container side of each published port (``127.0.0.1:8080:8080`` -> 8080)."""
    out = []
    for spec in service.get("ports", []):
        target = spec["target"] if isinstance(spec, dict) else str(spec).rsplit(":", 1)[-1]
        out.append(int(str(target).split("/")[0]))
    return out


def healthcheck_argv(service: Mapping[str, Any]) -> list[str] | None:
    test = (service.get("healthcheck") or {}).get("test")
    if not test:
        return None
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else list(rest)


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined), in file order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    parts = re.split(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", text)
    return {name.lower(): body for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def image_env(stage: str = "base") -> dict[str, str]:
    """The ``ENV`` of a Dockerfile stage (``KEY=VALUE`` form)."""
    env: dict[str, str] = {}
    for line in re.findall(r"(?m)^ENV\s+(.*)$", dockerfile_stages()[stage]):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def image_workdir(stage: str = "cpu") -> str:
    return re.findall(r"(?m)^WORKDIR\s+(\S+)", dockerfile_stages()[stage])[-1]


def image_project_copies() -> list[tuple[list[str], str]]:
    """The ``COPY`` instructions of the ``project`` stage: (sources, destination)."""
    out = []
    for line in re.findall(r"(?m)^COPY\s+(.*)$", dockerfile_stages()["project"]):
        words = [w for w in line.split() if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def postgres_databases() -> list[str]:
    return re.findall(r"(?i)CREATE DATABASE\s+(\w+)", POSTGRES_INIT.read_text())


def buckets(services: Mapping[str, Any]) -> list[str]:
    """The buckets ``minio-init`` creates (``mc mb ... local/<bucket>``)."""
    script = "\n".join(command(services["minio-init"]))
    found = []
    for line in script.splitlines():
        if re.match(r"\s*mc mb\b", line):
            found += re.findall(r"\blocal/([\w.-]+)", line)
    return found
