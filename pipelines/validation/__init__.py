"""The validation gate's parts; the gate itself (publish, quarantine, release) is :mod:`pipelines.steps.validate`.

* :mod:`~pipelines.validation.suite`: the expectations, from ``params.yaml`` and what the
  training data taught (``reference.json``);
* :mod:`~pipelines.validation.checkpoint`: a suite run as a Great Expectations checkpoint,
  with its data docs;
* :mod:`~pipelines.validation.results`: each expectation's outcome, how the outcomes of
  groups of days add up to a whole batch's, and the report with its findings.
* :mod:`~pipelines.validation.rows`: the row-count rule, every day of a batch against the
  bounds of a day.
"""
