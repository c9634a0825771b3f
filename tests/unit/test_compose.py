"""Static checks of the container stack: docker-compose.yml, .env.example, Dockerfile.

They need no Docker engine: the compose file is validated against the Compose
specification's JSON schema and read as data, and the pieces of configuration
it hands to Airflow, Celery and MLflow are checked against the installed
packages (the same lock file the image installs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
LOCK_FILE = REPO / "requirements.lock"
POSTGRES_INIT = REPO / "docker" / "postgres-init.sql"
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"

EXPECTED_SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "mlflow",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
    "model-server",
}
ONE_SHOT_SERVICES = {"minio-init", "airflow-init"}

# A compose variable reference: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`
# or `$VAR`. `$$` is compose's escape for a literal `$` that the container's
# shell expands, so a `$` next to another `$` is not a reference.
_REFERENCE = re.compile(r"(?<!\$)\$(?!\$)\{?([A-Za-z_][A-Za-z0-9_]*)")
# A whole value that is one required reference: `${VAR:?message}`.
_REQUIRED_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
# user:password@ inside a URI; the password may be a `${...}` reference with spaces.
_URI_CREDENTIALS = re.compile(r"://[^\s:/@]+:(?P<password>\$\{[^}]*\}|[^\s/@]+)@")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[-?]([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    import topology

    return topology.env_example()


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return env


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _queues(service: dict[str, Any]) -> set[str]:
    command = _command(service)
    for flag in ("--queues", "-q"):
        if flag in command:
            return set(command[command.index(flag) + 1].split(","))
    return set()


def _is_secret_name(name: str) -> bool:
    """Names that hold a secret; access key *ids* and paths to files are not secrets."""
    upper = name.upper()
    if upper.endswith(("_FILE", "_PATH")):
        return False
    return "PASSWORD" in upper or "SECRET" in upper or upper.endswith("KEY")


def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?message}` substitution."""
    return _INTERPOLATION.sub(lambda m: values.get(m.group(1)) or m.group(2) or "", text)


def _dockerfile_stages() -> dict[str, str]:
    """Stage name -> its instructions, in file order."""
    stages: dict[str, str] = {}
    parts = re.split(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text())
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        stages[name.lower()] = body
    return stages


# --- (a) the Compose specification ------------------------------------------


def test_compose_file_matches_compose_spec_schema(compose: dict[str, Any]) -> None:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"Compose spec schema not found at {COMPOSE_SCHEMA}; cannot validate.")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_references_point_at_declared_resources(compose: dict[str, Any], services: dict[str, Any]) -> None:
    """The schema checks shapes only; this checks names between sections."""
    volumes = set(compose.get("volumes") or {})
    configs = set(compose.get("configs") or {})
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name}: volume {source!r} is not declared"
            else:
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"
        for config in service.get("configs", []):
            source = config if isinstance(config, str) else config["source"]
            assert source in configs, f"{name}: config {source!r} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency!r}"


# --- (b) services, health and queues -----------------------------------------


def test_expected_services_exist(services: dict[str, Any]) -> None:
    assert EXPECTED_SERVICES <= set(services), f"missing: {EXPECTED_SERVICES - set(services)}"


def test_only_the_gpu_worker_is_behind_a_profile(services: dict[str, Any]) -> None:
    profiled = {name: service["profiles"] for name, service in services.items() if service.get("profiles")}
    assert profiled == {"airflow-worker-gpu": ["gpu"]}


def test_gpu_worker_reserves_nvidia_gpus_and_serves_the_gpu_queue(services: dict[str, Any]) -> None:
    worker = services["airflow-worker-gpu"]
    assert _queues(worker) == {"gpu"}
    assert worker["build"]["target"] == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", []) and device.get("count") == "all"
        for device in devices
    ), devices


def test_default_worker_serves_the_default_queue_on_the_cpu_image(services: dict[str, Any]) -> None:
    worker = services["airflow-worker"]
    assert _queues(worker) == {"default"}
    assert worker["build"]["target"] == "cpu"
    assert "deploy" not in worker


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    missing = [
        name for name, service in services.items() if name not in ONE_SHOT_SERVICES and "healthcheck" not in service
    ]
    assert not missing, f"no healthcheck: {missing}"


def test_dependency_conditions_can_be_met(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            elif condition == "service_completed_successfully":
                assert dependency in ONE_SHOT_SERVICES, f"{name} waits for {dependency} to exit"
                assert services[dependency].get("restart", "no") == "no", f"{dependency} must not restart"


def test_airflow_components_share_the_core_settings(services: dict[str, Any]) -> None:
    shared = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET")
    airflow = {name: _environment(s) for name, s in services.items() if name.startswith("airflow-")}
    for key in shared:
        values = {name: env.get(key) for name, env in airflow.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), f"{key} differs: {values}"
    assert airflow["airflow-scheduler"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_postgres_init_creates_every_database_the_stack_connects_to(compose: dict[str, Any]) -> None:
    databases = {m for text in _strings(compose) for m in re.findall(r"@postgres:5432/(\w+)", text)}
    created = set(re.findall(r"(?i)CREATE DATABASE\s+(\w+)", POSTGRES_INIT.read_text()))
    assert databases and databases <= created, f"not created: {databases - created}"


# --- (c) no literal secrets -----------------------------------------------------


def test_secret_variables_come_from_required_references(services: dict[str, Any]) -> None:
    offenders = {
        f"{name}.{key}": value
        for name, service in services.items()
        for key, value in _environment(service).items()
        if _is_secret_name(key) and not _REQUIRED_REFERENCE.match(str(value))
    }
    assert not offenders, f"secrets must be `${{VAR:?...}}` references: {offenders}"


def test_credentials_in_uris_come_from_required_references(compose: dict[str, Any]) -> None:
    passwords = [m["password"] for text in _strings(compose) for m in _URI_CREDENTIALS.finditer(text)]
    assert passwords, "expected the database URIs to carry credentials"
    literal = [password for password in passwords if not _REQUIRED_REFERENCE.match(password)]
    assert not literal, f"literal passwords in URIs: {literal}"


def test_env_example_holds_placeholders_only(env_example: dict[str, str]) -> None:
    real = {name: value for name, value in env_example.items() if _is_secret_name(name) and value != "change-me"}
    assert not real, f"use the `change-me` placeholder in .env.example: {sorted(real)}"


# --- (d) every variable is documented --------------------------------------------


def test_every_compose_variable_is_in_env_example(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    referenced = {name for text in _strings(compose) for name in _REFERENCE.findall(text)}
    assert referenced, "expected compose to read its secrets from variables"
    assert not referenced - set(env_example), f"missing from .env.example: {referenced - set(env_example)}"
    assert not set(env_example) - referenced, f"unused in compose: {set(env_example) - referenced}"


# --- (e) the image -----------------------------------------------------------------


def test_dockerfile_installs_the_lock_into_cpu_and_gpu_targets() -> None:
    text = DOCKERFILE.read_text()
    stages = _dockerfile_stages()
    assert "COPY requirements.lock" in text
    assert {"cpu", "gpu"} <= set(stages)
    assert list(stages)[-1] == "cpu", "cpu must be the last stage, hence the default target"
    assert re.search(r"uv pip install --system -r /tmp/requirements\.lock\b", stages["cpu"])

    # The gpu target swaps tensorflow-cpu for the CUDA build of the same version.
    tensorflow = re.search(r"^tensorflow-cpu==(\S+)$", LOCK_FILE.read_text(), re.M)
    assert tensorflow, "tensorflow-cpu is not pinned in the lock"
    assert "grep -v '^tensorflow-cpu=='" in stages["gpu"]
    assert f"'tensorflow[and-cuda]=={tensorflow[1]}'" in stages["gpu"]
    # ... and adds JAX's CUDA plugin over the lock's CPU jax of the same version (train.backend: jax).
    jax = re.search(r"^jax==(\S+)$", LOCK_FILE.read_text(), re.M)
    assert jax, "jax is not pinned in the lock"
    assert f"'jax[cuda12]=={jax[1]}'" in stages["gpu"]
    assert "jax" not in stages["cpu"], "the cpu target installs the lock alone"


def test_dockerfile_runs_as_airflow_with_the_project_layout() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"(?m)^ENV\s+(.*)$", text))))
    expected = {
        "AIRFLOW_HOME": "/opt/airflow",
        "AIRFLOW__CORE__DAGS_FOLDER": "/opt/project/dags",
        "AIRFLOW__CORE__PLUGINS_FOLDER": "/opt/project/plugins",
        "PYTHONPATH": "/opt/project",
        "MLOPS_HOME": "/opt/airflow/mlops",
    }
    assert expected.items() <= env.items(), env
    assert "--uid 50000" in text and "git" in text
    for stage in ("cpu", "gpu"):
        assert re.search(r"(?m)^USER airflow\s*$", _dockerfile_stages()[stage]), f"{stage} runs as root"


def test_named_volumes_on_our_image_are_precreated_for_the_airflow_user(services: dict[str, Any]) -> None:
    """Docker copies an image directory's owner into a new named volume; a path
    the image lacks would be root-owned and unwritable for uid 50000."""
    text = DOCKERFILE.read_text()
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("mlops:"):
            continue
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if not source.startswith((".", "/")):
                assert target in text, f"{name}: {target} is not created in the Dockerfile"


# --- configuration handed to the packages in the lock ---------------------------


def test_worker_healthcheck_celery_app_imports(services: dict[str, Any], tmp_path: Path) -> None:
    """The CeleryExecutor and the workers' healthcheck load this module."""
    probe = " ".join(services["airflow-worker"]["healthcheck"]["test"])
    module, _, attribute = re.search(r"--app\s+(\S+)", probe)[1].rpartition(".")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; m.{attribute}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_mlflow_reads_the_auth_config(
    compose: dict[str, Any], env_example: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.server.auth.config import read_auth_config

    content = _interpolate(compose["configs"]["mlflow-auth"]["content"], env_example)
    assert "POSTGRES_PASSWORD" not in content
    config_path = tmp_path / "basic_auth.ini"
    config_path.write_text(content)
    mlflow_env = _environment(compose["services"]["mlflow"])
    assert mlflow_env["MLFLOW_AUTH_CONFIG_PATH"] == compose["services"]["mlflow"]["configs"][0]["target"]
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config_path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "change-me")

    config = read_auth_config()

    assert config.database_uri.endswith("@postgres:5432/mlflow_auth")


# --- shared state: every worker sees the data and its repository -------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume."""
    out = {}
    for mount in service.get("volumes", []):
        source, target = str(mount).split(":")[:2]
        if not source.startswith((".", "/")):
            out[target] = source
    return out


def test_data_and_its_repository_live_in_a_volume_every_worker_shares(services: dict[str, Any]) -> None:
    """A task reads what the previous task of its run wrote, possibly on another worker."""
    image_env = dict(
        re.findall(
            r"(\w+)=(\S+)", " ".join(re.findall(r"(?m)^ENV\s+(.*)$", re.sub(r"\\\n", " ", DOCKERFILE.read_text())))
        )
    )
    for name in ("airflow-worker", "airflow-worker-gpu", "airflow-init"):
        env = {**image_env, **_environment(services[name])}
        mounts = _mounts(services[name])
        for key in ("MLOPS_HOME", "MLOPS_DVC_REPO", "MLOPS_DATA_DIR"):
            path = env[key]
            volume = [vol for target, vol in mounts.items() if path == target or path.startswith(target + "/")]
            assert volume == ["mlops-state"], f"{name}: {key}={path} is not in the shared mlops-state volume"
    worker = _environment(services["airflow-worker"])
    assert worker["MLOPS_DATA_DIR"].startswith(worker["MLOPS_DVC_REPO"] + "/"), (
        "DVC versions data inside its repository"
    )
    init = "\n".join(_command(services["airflow-init"]))
    assert 'git -C "$$MLOPS_DVC_REPO" init' in init, "airflow-init creates the data repository"


def test_model_server_serves_the_workers_registry_on_loopback(services: dict[str, Any]) -> None:
    """The prediction service: the workers' image, registry and data folder; ready once a model is loaded."""
    import importlib.util

    server, worker = services["model-server"], services["airflow-worker"]
    assert server["image"] == worker["image"] and _command(server)[:3] == ["python", "-m", "pipelines.serving"]
    assert importlib.util.find_spec("pipelines.serving.__main__") is not None
    env, worker_env = _environment(server), _environment(worker)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLOPS_DATA_DIR"):
        assert env[key] == worker_env[key], f"model-server {key} differs from the workers'"
    assert _mounts(server) == {"/opt/airflow/mlops": "mlops-state"}, "the served log lives beside the data"
    port = env["MLOPS_SERVE_PORT"]
    assert env["MLOPS_BIND_HOST"] == "0.0.0.0" and server["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"http://localhost:{port}/ready" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["mlflow"]["condition"] == "service_healthy"


# --- the KubernetesExecutor equivalent (docs/kubernetes) -------------------------------

K8S_DIR = REPO / "docs" / "kubernetes"
CELERY_ONLY = {"AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"}


def _k8s(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S_DIR / name).read_text()) if doc]


def test_kubernetes_config_carries_composes_airflow_settings(
    services: dict[str, Any], env_example: dict[str, str]
) -> None:
    compose_env = {k: _interpolate(str(v), env_example) for k, v in _environment(services["airflow-worker"]).items()}
    docs = {doc["kind"]: doc for doc in _k8s("config.yaml")}
    config, secret = docs["ConfigMap"]["data"], docs["Secret"]["stringData"]
    assert not set(config) & set(secret)
    executor_keys = {k for k in config if k.startswith("AIRFLOW__KUBERNETES_EXECUTOR__")}
    assert set(config) | set(secret) == (set(compose_env) - CELERY_ONLY) | executor_keys
    assert config["AIRFLOW__CORE__EXECUTOR"] == "KubernetesExecutor"
    assert {"NAMESPACE", "POD_TEMPLATE_FILE"} <= {
        k.removeprefix("AIRFLOW__KUBERNETES_EXECUTOR__") for k in executor_keys
    }
    for key, value in config.items():  # same values, the executor aside
        if key in compose_env and key != "AIRFLOW__CORE__EXECUTOR":
            assert str(value) == str(compose_env[key]), f"{key}: {value!r} here, {compose_env[key]!r} in compose"
    assert set(secret.values()) == {"change-me"}, "placeholders only"
    for key in secret:
        assert _is_secret_name(key) or "://" in str(compose_env[key]) or key == "AWS_ACCESS_KEY_ID", key


def test_kubernetes_pod_template_matches_the_compose_worker(services: dict[str, Any]) -> None:
    (pod,) = _k8s("pod-template.yaml")
    (config, secret) = _k8s("config.yaml")
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    (base,) = pod["spec"]["containers"]
    assert base["name"] == "base", "the KubernetesExecutor runs the task in the container named base"
    assert base["image"].endswith("mlops:cpu")
    refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in base["envFrom"]}
    assert refs == {config["metadata"]["name"], secret["metadata"]["name"]}
    worker_mounts = _mounts(services["airflow-worker"])
    mounts = {m["mountPath"]: m["name"] for m in base["volumeMounts"]}
    assert mounts["/opt/airflow/mlops"] == "mlops-state" == worker_mounts["/opt/airflow/mlops"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 50000
    template_path = config["data"]["AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE"]
    assert template_path.endswith("/pod-template.yaml")


def test_kubernetes_gpu_pod_override_requests_an_nvidia_gpu() -> None:
    (pod,) = _k8s("gpu-pod-override.yaml")
    assert pod["kind"] == "Pod"
    (base,) = pod["spec"]["containers"]
    assert base["name"] == "base", "pod_override merges into the container named base"
    assert base["image"].endswith("mlops:gpu")
    gpus = base["resources"]["limits"]["nvidia.com/gpu"]
    assert isinstance(gpus, str) and int(gpus) >= 1, "quantities are strings"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    # docs/production.md shows the same pod in Python.
    doc = (REPO / "docs" / "production.md").read_text()
    assert f'limits={{"nvidia.com/gpu": "{gpus}"}}' in doc
    assert f'image="{base["image"]}"' in doc
    assert 'executor_config={"pod_override": GPU_POD}' in doc


def test_kubernetes_pod_files_deserialize_to_v1pod() -> None:
    client = pytest.importorskip("kubernetes.client", reason="the kubernetes client is not in the lock")
    api = client.ApiClient()
    for name in ("pod-template.yaml", "gpu-pod-override.yaml"):
        (data,) = _k8s(name)
        pod = api._ApiClient__deserialize(data, "V1Pod")
        assert pod.spec.containers[0].name == "base"


# --- the production docs' commands match the files ----------------------------------

PRODUCTION_DOCS = REPO / "docs" / "production.md"


def _production_commands() -> list[str]:
    """Shell lines in docs/production.md (continuations joined)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", PRODUCTION_DOCS.read_text(), re.S):
        lines += [ln.split("  #")[0].strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    return lines


def test_production_docs_commands_name_real_services_files_and_variables(
    compose: dict[str, Any], services: dict[str, Any], env_example: dict[str, str]
) -> None:
    commands = _production_commands()
    assert any(c.startswith("docker compose up") for c in commands)
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    published = {int(str(p).rsplit(":", 1)[-1]) for s in services.values() for p in s.get("ports", [])}
    assigned = {name for line in commands for name in re.findall(r"^([A-Z][A-Z0-9_]*)=", line)}
    for line in commands:
        for profile in re.findall(r"--profile (\S+)", line):
            assert profile in profiles, line
        for service in re.findall(r"--scale ([\w-]+)=", line) + re.findall(r"\b(?:exec(?: -T)?|logs) ([\w-]+)", line):
            assert service in services, line
        for path in re.findall(r"(?:-f |--from-file=|^cp )(\S+)", line):
            assert (REPO / path).exists(), line
        for var in re.findall(r"\$([A-Z][A-Z0-9_]+)", line):
            assert var in env_example or var in assigned, f"{var} is not in .env.example: {line}"
        for port in re.findall(r"https?://localhost:(\d+)", line):
            assert int(port) in published, line
    worker = _environment(services["airflow-worker"])
    text = "\n".join(commands)
    for key in ("MLOPS_DVC_REPO", "MLOPS_DVC_REMOTE_URL"):
        if worker[key].split("/")[0] in text or worker[key] in text:
            assert worker[key] in text, f"the docs' {key} differs from compose's {worker[key]}"
    for path in re.findall(r"-C (/\S+)", text):
        assert path == worker["MLOPS_DVC_REPO"], path
    for url in re.findall(r"(s3://\S+)", text):
        assert url == worker["MLOPS_DVC_REMOTE_URL"], url


def test_production_docs_name_the_files_they_point_to() -> None:
    text = PRODUCTION_DOCS.read_text()
    for path in re.findall(r"`((?:docs|docker|tests)/[\w./-]+)`", text):
        assert (REPO / path).exists(), path
    for link in re.findall(r"\]\(((?!https?:|#)[^)]+)\)", text):
        assert (PRODUCTION_DOCS.parent / link.split("#")[0]).exists(), link
