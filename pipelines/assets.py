"""The Airflow Assets the DAGs share. Imported at DAG parse time: keep it to these definitions.

* ``FLIGHTS_COLLECTED``: an outlet of the training DAG's ``collect`` task; the
  monitoring DAG is scheduled on it, so it runs after new data arrives.
* ``RETRAINING_REQUESTED``: an outlet of the monitoring DAG's
  ``record_retraining`` task, with the reason and the report in the event's
  extra; its asset state store keeps the last triggered retraining, which the
  cooldown reads.
"""

from __future__ import annotations

from airflow.sdk import Asset

FLIGHTS_COLLECTED = Asset(name="flights_collected", uri="flights_collected", group="flights")
RETRAINING_REQUESTED = Asset(name="flights_retraining_requested", uri="flights_retraining_requested", group="flights")

# Key of the last triggered retraining in RETRAINING_REQUESTED's asset state store.
LAST_RETRAINING_KEY = "last_retraining"
