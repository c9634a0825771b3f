"""Monitoring's parts; the monitoring steps and the retraining decision are :mod:`pipelines.steps.monitor`.

* :mod:`~pipelines.monitoring.reference`: the champion's reference (a sample of its
  training split with its probabilities), written at registration and read by monitoring;
* :mod:`~pipelines.monitoring.checks`: the Evidently checks (data drift, prediction
  drift, performance) and their results;
* :mod:`~pipelines.monitoring.served`: what the prediction service answered: drift, the
  shadow against the live model, online performance;
* :mod:`~pipelines.monitoring.staleness`: the champion's age, alerted past a limit;
* :mod:`~pipelines.monitoring.compute`: each step's time and memory, logged every run and
  compared with earlier runs;
* :mod:`~pipelines.monitoring.runlog`: the monitoring run's MLflow run, where all of them log.
"""
