"""The registered model: an MLflow pyfunc that takes raw rows and returns the probability of the positive label.

It wraps the Keras model (whose preprocessing is inside) and the one function
that turns a frame into model inputs, :func:`pipelines.model.features.to_model_inputs`,
which the training data went through too: no training/serving skew.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import pandas as pd

# The model's output column. Batch prediction writes it under predict.probability_column.
PROBABILITY = "probability"


class ProbabilityModel(mlflow.pyfunc.PythonModel):
    """``predict(frame) -> frame[probability]`` over raw feature columns."""

    def load_context(self, context: Any) -> None:
        from pipelines.config import FeatureSpec
        from pipelines.model.network import load_model

        spec = json.loads(open(context.artifacts["feature_spec"], encoding="utf-8").read())
        self.features = FeatureSpec(numeric=tuple(spec["numeric"]), categorical=tuple(spec["categorical"]))
        self.batch_size = int(spec.get("batch_size", 8192))
        self.model = load_model(context.artifacts["keras_model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from pipelines.model.features import to_model_inputs
        from pipelines.model.network import predict_proba

        missing = [c for c in self.features.all if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing feature columns {missing}")
        proba = predict_proba(self.model, to_model_inputs(model_input, self.features), self.batch_size)
        return pd.DataFrame({PROBABILITY: proba}, index=model_input.index)


# Versions registered before the class had a generic name unpickle it under this one.
FlightDelayModel = ProbabilityModel
