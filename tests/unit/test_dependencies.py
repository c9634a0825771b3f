"""Every stage's libraries import from the locked environment, at the versions we pinned."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"

STAGE_MODULES = {
    "orchestration": ["airflow", "airflow.sdk", "airflow.providers.standard", "airflow.providers.celery"],
    "collect": ["pandas", "pyarrow", "sqlalchemy", "psycopg2"],
    "validate": ["great_expectations", "great_expectations.expectations"],
    "preprocess_train": ["tensorflow", "keras"],
    "evaluate": ["sklearn.ensemble", "sklearn.metrics"],
    "register_predict": ["mlflow", "mlflow.pyfunc"],
    "versioning": ["dvc", "dvc_s3"],
    "monitoring": ["evidently", "evidently.presets"],
}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_stage_libraries_import(stage: str) -> None:
    for module in STAGE_MODULES[stage]:
        importlib.import_module(module)


def test_installed_versions_match_the_lock() -> None:
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", LOCK.read_text(), flags=re.M))
    for dist in (
        "apache-airflow",
        "mlflow",
        "dvc",
        "great-expectations",
        "evidently",
        "scikit-learn",
        "tensorflow-cpu",
        "pandas",
    ):
        locked = pins.get(dist) or pins.get(f"{dist}[auth]")
        assert locked, f"{dist} is not pinned in {LOCK.name}"
        assert md.version(dist) == locked, f"{dist}: installed {md.version(dist)}, locked {locked}"
    assert int(md.version("pandas").split(".")[0]) < 3, "evidently 0.7 does not import with pandas 3"
