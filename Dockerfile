# One image for every Airflow component and the MLflow server.
#
#   docker build -t mlops:cpu .                  # default target: cpu (the last stage)
#   docker build -t mlops:gpu --target gpu .     # TensorFlow and JAX with CUDA, for the `gpu` Celery queue
#
# Both targets install the same lock file; the gpu target adds the CUDA builds of TensorFlow and JAX.

FROM python:3.11-slim-bookworm AS base

# git: DVC needs it. curl: the compose healthchecks use it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git curl \
    && rm -rf /var/lib/apt/lists/*

# uid 50000 and group 0 follow the official Airflow image, so volumes and
# bind mounts prepared for it work unchanged.
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
    && mkdir -p /opt/airflow/logs /opt/airflow/mlops /opt/airflow/auth /opt/project \
    && chown -R airflow:0 /opt/airflow /opt/project

RUN pip install --no-cache-dir uv==0.13.9
COPY requirements.lock /tmp/requirements.lock

# Bytecode is compiled at build time: site-packages is not writable by the
# runtime user, and every Airflow task starts a fresh interpreter.
ENV PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/project/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/project/plugins \
    PYTHONPATH=/opt/project \
    MLOPS_HOME=/opt/airflow/mlops \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1

# The project's code, gathered once so that both targets copy the same tree.
# With its git and DVC settings: airflow-init makes a copy of it the data
# repository that the pipeline versions its data in.
FROM scratch AS project
COPY dags/ /opt/project/dags/
COPY plugins/ /opt/project/plugins/
COPY pipelines/ /opt/project/pipelines/
COPY params.yaml dvc.yaml .gitignore .dvcignore /opt/project/
COPY .dvc/config .dvc/.gitignore /opt/project/.dvc/


FROM base AS gpu
# The CUDA builds of both training backends (train.backend, docs/gpu.md):
# `tensorflow[and-cuda]` for tensorflow, `jax[cuda12]` (JAX's CUDA 12 plugin, over
# the lock's CPU jax/jaxlib of the same version) for jax. Both pull the CUDA and
# cuDNN runtime as pip wheels (one set, resolved together against the lock), so a
# slim Python base plus the host's NVIDIA driver (NVIDIA Container Toolkit) is
# enough; no CUDA base image is needed.
RUN grep -v '^tensorflow-cpu==' /tmp/requirements.lock > /tmp/requirements-gpu.lock \
    && uv pip install --system -r /tmp/requirements-gpu.lock 'tensorflow[and-cuda]==2.21.0' 'jax[cuda12]==0.10.2'
COPY --from=project --chown=airflow:0 /opt/project /opt/project
WORKDIR /opt/project
USER airflow


# Last stage, hence the default target.
FROM base AS cpu
RUN uv pip install --system -r /tmp/requirements.lock
COPY --from=project --chown=airflow:0 /opt/project /opt/project
WORKDIR /opt/project
USER airflow
