"""Monitoring's parts; the monitoring steps and the retraining decision are :mod:`pipelines.steps.monitor`.

* :mod:`~pipelines.monitoring.reference`: the champion's reference (a sample of its
  training split with its probabilities), written at registration and read by monitoring;
* :mod:`~pipelines.monitoring.checks`: the Evidently checks (data drift, prediction
  drift, performance) and their results.
"""
