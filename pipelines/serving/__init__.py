"""Online serving: a prediction service that follows the MLflow registry.

* :mod:`~pipelines.serving.schema`: the request body, generated from the feature spec.
* :mod:`~pipelines.serving.versions`: a registered version loaded and checked, scored on the fast path.
* :mod:`~pipelines.serving.watcher`: the aliases followed, new versions swapped in atomically.
* :mod:`~pipelines.serving.served_log`: shadow scoring and the log of what was served.
* :mod:`~pipelines.serving.metrics`: the Prometheus metrics.
* :mod:`~pipelines.serving.app`: the FastAPI app; ``python -m pipelines.serving`` runs it.
"""
