"""docker-compose.yml's production topology, run as plain processes on this machine (no Docker).

Everything is read from the files an operator deploys (``tests/compose_files.py``),
so the test and the stack cannot drift apart:

* ``.env.example`` gives the variables; each ``change-me`` secret gets a fresh
  random value (a Fernet key for ``AIRFLOW_FERNET_KEY``);
* ``docker-compose.yml`` gives each service's environment, command,
  configuration files and healthcheck, interpolated as Compose does
  (``${VAR:?...}``, ``${VAR:-default}``, ``$$``);
* the ``Dockerfile`` gives the image's environment (``ENV``) and the project
  tree it copies to ``/opt/project``.

What a container has to itself becomes something of its own here: each
container path (``/opt/airflow``, ``/opt/project``, configs) a folder under the
run's temporary root; each service hostname and port ``127.0.0.1`` and a free
port in 18080-18099; the ``postgres`` service the machine's PostgreSQL, with a
role and fresh databases named after the run (those ``docker/postgres-init.sql``
creates); the ``redis`` service the machine's Redis, with a database number of
the run's own; MinIO ``moto_server`` (S3 API), with the buckets ``minio-init``
creates. Ports that every container may use privately (the scheduler's health
server, the log servers) are moved with the Airflow settings that own them.
Nothing else is added: no variable of the caller's environment leaks in.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compose_files import (
    buckets,
    command,
    compose,
    container_ports,
    env_example,
    environment,
    fill_secrets,
    healthcheck_argv,
    image_env,
    image_project_copies,
    image_workdir,
    postgres_databases,
)

from pipelines.ops.cluster import AirflowCluster, ServiceError, wait_http

REPO = Path(__file__).resolve().parents[1]

PORT_RANGE = range(18080, 18100)  # the ports this project's tests may use on the shared machine
PG_HOST, PG_PORT, PG_ADMIN = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_CLAIM_KEY = "flights-mlops-topology-claim"

# How each compose service is reproduced; a service missing here fails the consistency test.
#   run:      its own command, as a process
#   airflow:  its own `airflow ...` command, as a component of AirflowCluster
#   one-shot: its own command, run to completion
#   serving:  its own command, as a process; ready once a model is registered, so its
#             healthcheck is waited for after the training run (tests/e2e/test_topology.py)
#   replaced: the local stand-in named in the comment
#   skipped:  not started (needs hardware this machine lacks)
SERVICES: dict[str, str] = {
    "postgres": "replaced",  # the machine's PostgreSQL: a role and the databases of postgres-init.sql
    "redis": "replaced",  # the machine's Redis: a database number of the run's own
    "minio": "replaced",  # moto_server, the S3 API on a free port
    "minio-init": "replaced",  # the buckets its `mc mb` creates, created with boto3
    "mlflow": "run",
    "airflow-init": "one-shot",
    "airflow-apiserver": "airflow",
    "airflow-scheduler": "airflow",
    "airflow-dag-processor": "airflow",
    "airflow-triggerer": "airflow",
    "airflow-worker": "airflow",
    "airflow-worker-gpu": "skipped",  # profile gpu: NVIDIA GPUs
    "model-server": "serving",
}

# Ports every Airflow container may listen on privately; on one host each
# needs a port of its own, set through the setting that owns it.
PRIVATE_PORTS: dict[tuple[str, int], str] = {
    ("airflow-scheduler", 8974): "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    ("airflow-worker", 8793): "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    ("airflow-triggerer", 8794): "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
}

# Settings that name the port a service listens on (a published port given as a
# bare number, not as an address the translation would recognise): moved with it.
LISTEN_PORT_SETTINGS: dict[tuple[str, int], str] = {
    ("model-server", 8000): "MLOPS_SERVE_PORT",
}

# Published ports that have no counterpart here (MinIO's web console).
UNSERVED_PORTS = {("minio", 9001)}


# --------------------------------------------------------------------------- translation


@dataclass
class Translation:
    """Compose names (hosts, ports, paths, databases) -> their counterparts on this machine."""

    root: Path
    name: str  # the run's unique name: PostgreSQL role and database prefix
    pg_user: str  # POSTGRES_USER of the compose postgres service
    redis_db: int
    ports: dict[tuple[str, int], int]  # (service, container port) -> port here
    configs: dict[str, Path] = field(default_factory=dict)  # container path of a config -> file here

    @property
    def paths(self) -> dict[str, Path]:
        return {
            "/opt/airflow": self.root / "opt-airflow",
            "/opt/project": self.root / "opt-project",
            "/home/airflow": self.root / "home-airflow",
        }

    def database(self, compose_name: str) -> str:
        return f"{self.name}_{compose_name}"

    def text(self, value: str, service: str) -> str:
        """One string of ``service``'s configuration, as it must read here."""

        def pg(m: re.Match) -> str:
            if m["user"] != self.pg_user:
                raise ValueError(f"{service}: connects to postgres as {m['user']!r}, not {self.pg_user!r}")
            return f"://{self.name}{m['password'] or ''}@{PG_HOST}:{PG_PORT}/{self.database(m['db'])}"

        value = re.sub(r"://(?P<user>[^:/@\s]+)(?P<password>:[^@\s]*)?@postgres:5432/(?P<db>\w+)", pg, value)
        value = re.sub(r"redis://redis:6379/\d+", f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}", value)
        for (owner, port), here in self.ports.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(owner)}:{port}(?!\d)", f"127.0.0.1:{here}", value)
            if owner == service:
                value = re.sub(rf"(?<![\w.-])(localhost|127\.0\.0\.1):{port}(?!\d)", rf"\g<1>:{here}", value)
                value = re.sub(rf"^(--port[= ]){port}$", rf"\g<1>{here}", value)
        # Never every interface here.
        value = re.sub(r"^(--host=)?0\.0\.0\.0$", r"\g<1>127.0.0.1", value)
        for target, path in self.configs.items():
            value = value.replace(target, str(path))
        for container, here in self.paths.items():
            value = re.sub(rf"{re.escape(container)}(?=/|$|[\s:\"'])", str(here), value)
        return value

    def argv(self, argv: list[str], service: str) -> list[str]:
        out = [self.text(a, service) for a in argv]
        for i, word in enumerate(out[:-1]):  # `--port 8080` as two words
            if word == "--port" and (service, int(out[i + 1]) if out[i + 1].isdigit() else -1) in self.ports:
                out[i + 1] = str(self.ports[(service, int(out[i + 1]))])
        return out

    def env(self, env: Mapping[str, str], service: str) -> dict[str, str]:
        return {k: self.text(v, service) for k, v in env.items()}


def untranslated(value: str, services: Mapping[str, Any]) -> list[str]:
    """References to compose services left in a translated string (service hostnames)."""
    names = "|".join(re.escape(n) for n in sorted(services, key=len, reverse=True))
    pattern = rf"(?:(?<=//)|(?<=@)|(?<![\w./-]))(?:{names})(?=:\d|/)"
    return re.findall(pattern, value)


def free_ports(count: int) -> list[int]:
    """``count`` ports of :data:`PORT_RANGE` nobody listens on now."""
    found = []
    for port in PORT_RANGE:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"only {len(found)} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}, need {count}")


# --------------------------------------------------------------------------- the topology


@dataclass
class Topology:
    """The compose stack's services as processes; :meth:`up` starts it, :meth:`down` removes every trace."""

    root: Path
    values: dict[str, str] = field(default_factory=lambda: fill_secrets(env_example()))
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.stack = compose(self.values)
        self.services: dict[str, dict[str, Any]] = self.stack["services"]
        self.name = f"mlops_topo_{secrets.token_hex(4)}"
        self.databases: list[str] = []
        self.role_created = False
        self.redis_db: int | None = None
        self.cluster: AirflowCluster | None = None
        self.timings: dict[str, float] = {}
        self.pids: set[int] = set()  # every process seen under the topology's services

    # -- configuration -----------------------------------------------------------
    def configure(self, redis_db: int) -> Translation:
        """Decide the ports, names and paths (nothing is started); :meth:`up` calls it."""
        self.t = self._translation(redis_db)
        return self.t

    def _translation(self, redis_db: int) -> Translation:
        wanted = [
            (name, port)
            for name, service in self.services.items()
            if SERVICES.get(name) != "skipped"
            for port in container_ports(service)
            if (name, port) not in UNSERVED_PORTS
        ] + list(PRIVATE_PORTS)
        ports = dict(zip(wanted, free_ports(len(wanted)), strict=True))
        t = Translation(
            root=self.root,
            name=self.name,
            pg_user=environment(self.services["postgres"])["POSTGRES_USER"],
            redis_db=redis_db,
            ports=ports,
        )
        for cfg_name in self.stack.get("configs") or {}:
            for service in self.services.values():
                for mount in service.get("configs", []):
                    if (mount if isinstance(mount, str) else mount["source"]) == cfg_name:
                        target = mount.get("target", f"/{cfg_name}") if isinstance(mount, dict) else f"/{cfg_name}"
                        t.configs[target] = self.root / "configs" / cfg_name
        return t

    def base_env(self) -> dict[str, str]:
        """What every container starts with: the image's ENV, a PATH, a HOME, a HOSTNAME."""
        venv_bin = Path(sys.executable).parent
        return {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/home/airflow",  # useradd --create-home in the Dockerfile
            "HOSTNAME": socket.gethostname(),
            "LANG": "C.UTF-8",
            **image_env("base"),
        }

    def service_env(self, name: str) -> dict[str, str]:
        env = {**self.base_env(), **environment(self.services[name])}
        if SERVICES[name] in ("airflow", "one-shot") and name.startswith("airflow"):
            env.update({key: str(self.t.ports[key_]) for key_, key in PRIVATE_PORTS.items()})
        env = self.t.env(env, name)
        for (owner, port), key in LISTEN_PORT_SETTINGS.items():
            if owner == name and env.get(key) == str(port):
                env[key] = str(self.t.ports[(owner, port)])
        return env

    def airflow_env(self) -> dict[str, str]:
        """The environment every long-running Airflow component shares (checked to be one)."""
        envs = {name: self.service_env(name) for name, kind in SERVICES.items() if kind == "airflow"}
        first = next(iter(envs.values()))
        differ = [name for name, env in envs.items() if env != first]
        if differ:
            raise ValueError(f"Airflow components with an environment of their own: {differ}")
        return first

    def airflow_components(self) -> list[tuple[str, list[str]]]:
        out = []
        for name, kind in SERVICES.items():
            if kind == "airflow":
                argv = self.t.argv(command(self.services[name]), name)
                if argv[0] != "airflow":
                    raise ValueError(f"{name} runs {argv[0]!r}, not airflow")
                out.append((name, argv[1:]))
        return out

    def names(self, *kinds: str) -> list[str]:
        """The services reproduced as one of ``kinds`` (see :data:`SERVICES`)."""
        return [name for name, kind in SERVICES.items() if kind in kinds]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.t.ports[('airflow-apiserver', 8080)]}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.t.ports[('mlflow', 5000)]}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.t.ports[('minio', 9000)]}"

    # -- lifecycle ---------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[what] = time.perf_counter() - start
        self.log(f"topology: {what} in {self.timings[what]:.1f}s")

    def up(self) -> Topology:
        """Start every service in dependency order; on any failure, take everything down and raise."""
        try:
            with self.timed("storage (PostgreSQL, Redis, S3)"):
                self._claim_redis_db()
                self.configure(self.redis_db)
                self._write_files()
                self._create_databases()
                self.cluster = AirflowCluster(
                    self.airflow_env(),
                    log_dir=self.root / "services",
                    components=tuple(self.airflow_components()),
                    api_port=self.t.ports[("airflow-apiserver", 8080)],
                )
                self._start_s3()
            with self.timed("airflow-init and the MLflow server started"):
                self._start("mlflow")
                self.run_one_shot("airflow-init")
            with self.timed("Airflow components and MLflow healthy, the model server started"):
                self.cluster.start(timeout=300)
                self.wait_healthy("mlflow", timeout=300)
                for name in self.names("serving"):
                    self._start(name)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> list[str]:
        """Stop every process and drop every database, Redis key and file it made; return what survived."""
        self._remember_pids()
        if self.cluster is not None:
            self.cluster.stop()
        survivors = self.processes()
        self._drop_databases()
        self._release_redis_db()
        return survivors

    def processes(self) -> list[str]:
        """Every live process that belongs to the topology: seen under its services, or
        carrying its HOME (daemons that left their process group keep their environment)."""
        import psutil

        home = str(self.t.paths["/home/airflow"]) if hasattr(self, "t") else None
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if proc.pid in self.pids or (home and proc.environ().get("HOME") == home):
                    found.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
            except psutil.Error:
                continue
        return found

    def _remember_pids(self) -> None:
        import psutil

        if self.cluster is None:
            return
        for proc in self.cluster.services.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                self.pids.add(proc.pid)
                self.pids.update(child.pid for child in parent.children(recursive=True))

    # -- services ------------------------------------------------------------------
    def _claim_redis_db(self) -> None:
        import redis

        for db in range(15, 0, -1):  # 0 is everyone's default
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
            try:
                if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, self.name, nx=True, ex=3600):
                    self.redis_db = db
                    return
            finally:
                client.close()
        raise RuntimeError("no free Redis database number (1-15)")

    def _release_redis_db(self) -> None:
        import redis

        if self.redis_db is None:
            return
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db)
        try:
            if client.get(REDIS_CLAIM_KEY) == self.name.encode():
                client.flushdb()
        finally:
            client.close()
        self.redis_db = None

    def _pg(self):
        import psycopg2

        conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_ADMIN, dbname="postgres")
        conn.autocommit = True
        return conn

    def _create_databases(self) -> None:
        from psycopg2 import sql

        conn = self._pg()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(self.name)),
                    [self.values["POSTGRES_PASSWORD"]],
                )
                self.role_created = True
                for db in postgres_databases():
                    name = self.t.database(db)
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.name))
                    )
                    self.databases.append(name)
        finally:
            conn.close()

    def _drop_databases(self) -> None:
        from psycopg2 import sql

        if not self.databases and not self.role_created:
            return
        conn = self._pg()
        try:
            with conn.cursor() as cur:
                for name in self.databases:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                self.databases.clear()
                if self.role_created:
                    cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.name)))
                    self.role_created = False
        finally:
            conn.close()

    def _write_files(self) -> None:
        """The container paths, the image's project tree, the config files, a .env like an operator's."""
        for path in self.t.paths.values():
            path.mkdir(parents=True, exist_ok=True)
        for sources, dest in image_project_copies():
            target = Path(self.t.text(dest, "image"))
            for src in sources:
                origin = REPO / src
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        # Named volumes on the image's paths start as the image's (empty) folders.
        for service in self.services.values():
            for mount in service.get("volumes", []):
                source, target = str(mount).split(":")[:2]
                here = Path(self.t.text(target, "image"))
                if not source.startswith((".", "/")) and here.is_relative_to(self.root):
                    here.mkdir(parents=True, exist_ok=True)
        for cfg_name, cfg in (self.stack.get("configs") or {}).items():
            path = self.root / "configs" / cfg_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.t.text(cfg["content"], "configs"))
        (self.root / ".env").write_text("".join(f"{k}={v}\n" for k, v in self.values.items()))

    def _start_s3(self) -> None:
        assert self.cluster is not None
        port = self.t.ports[("minio", 9000)]
        argv = ["moto_server", "-H", "127.0.0.1", "-p", str(port)]
        self.cluster.services.start("minio", argv, self.t.env(self.base_env(), "minio"))
        wait_http(f"{self.s3_url}/moto-api/", 60, self.cluster.services, ok=range(200, 500))
        s3 = self.s3_client()
        for bucket in buckets(self.services):
            s3.create_bucket(Bucket=bucket)

    def s3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=self.values["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.values["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def _start(self, name: str) -> None:
        assert self.cluster is not None
        argv = self.t.argv(command(self.services[name]), name)
        cwd = Path(self.t.text(image_workdir(), name))
        self.cluster.services.start(name, argv, self.service_env(name), cwd=cwd)

    def run_one_shot(self, name: str, timeout: float = 600) -> None:
        env = self.service_env(name)
        argv = self.t.argv(command(self.services[name]), name)
        cwd = Path(self.t.text(image_workdir(), name))
        log = self.root / "services" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            done = subprocess.run(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode != 0:
            raise ServiceError(f"{name} exited with {done.returncode}:\n{log.read_text(errors='replace')[-3000:]}")

    def healthcheck(self, name: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the service's compose healthcheck once, in its environment."""
        argv = self.t.argv(healthcheck_argv(self.services[name]), name)
        cwd = Path(self.t.text(image_workdir(), name))
        return subprocess.run(
            argv, env=self.service_env(name), cwd=cwd, capture_output=True, text=True, timeout=timeout
        )

    def wait_healthy(self, name: str, timeout: float) -> None:
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        while True:
            self.cluster.services.check_alive()
            done = self.healthcheck(name)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{name} not healthy after {timeout:.0f}s: {done.stdout[-500:]}{done.stderr[-500:]}\n"
                    f"{self.cluster.services.tail(name)}"
                )
            time.sleep(2)

    def snapshot_pids(self) -> None:
        """Record every process under the services now (task processes come and go)."""
        self._remember_pids()

    def worker_data_dir(self) -> Path:
        return Path(self.airflow_env()["MLOPS_DATA_DIR"])

    def worker_env(self) -> dict[str, str]:
        return self.airflow_env()


def task_logs(airflow_home: Path, dag_id: str, run_id: str, chars: int = 4000) -> str:
    """The end of each task log of one run (for failure messages)."""
    base = airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    parts = []
    for path in sorted(base.glob("task_id=*/attempt=*.log")):
        text = path.read_text(errors="replace")
        lines = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
                lines.append(f"{record.get('level', '')} {record.get('event', '')}")
            except ValueError:
                lines.append(line)
        parts.append(f"--- {path.relative_to(base)}\n" + "\n".join(lines)[-chars:])
    return "\n".join(parts)
