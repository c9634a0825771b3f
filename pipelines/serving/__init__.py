"""Online serving: a prediction service that follows the MLflow registry.

``make serve`` (``python -m pipelines.serving``) serves the version under ``serve.alias`` of the
registry that :mod:`pipelines.settings` names (the local one ``make pipeline`` leaves, by default)
on ``127.0.0.1:${MLOPS_SERVE_PORT:-8000}``, and swaps in whatever version the alias moves to::

    curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
      -d '{"month": 6, "day": 22, "day_of_week": 5, "hour": 19, "minute": 30, "sched_arr_time": 2154,
           "distance": 1182, "temp": 69.98, "dewp": 60.08, "humid": 70.81, "wind_dir": 150,
           "wind_speed": 8.06, "wind_gust": null, "precip": 0, "pressure": 1021.5, "visib": 10,
           "carrier": "9E", "origin": "JFK", "dest": "MSY"}'

``GET /health``, ``/ready``, ``/model``, ``/metrics`` (Prometheus) and ``/docs`` (OpenAPI).

* :mod:`~pipelines.serving.schema`: the request body, generated from the feature spec.
* :mod:`~pipelines.serving.versions`: a registered version loaded and checked, scored on the fast path.
* :mod:`~pipelines.serving.watcher`: the aliases followed, new versions swapped in atomically.
* :mod:`~pipelines.serving.served_log`: shadow scoring and the log of what was served.
* :mod:`~pipelines.serving.metrics`: the Prometheus metrics.
* :mod:`~pipelines.serving.app`: the FastAPI app; :mod:`~pipelines.serving.__main__` runs it.
"""
