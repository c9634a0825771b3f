"""The pipeline's steps, one module each, in the order a nightly run takes them.

``collect`` → ``validate`` → ``should_train`` → ``preprocess`` → ``version`` (the ``version_data``
task) → ``train`` → ``evaluate`` → ``register`` → ``predict`` (``batch_predict``); ``monitor``
runs the monitoring DAG's checks. Each is a typed function of explicit paths and the
configuration sections it reads; :mod:`pipelines.runner` resolves a run's paths and calls them.
"""
