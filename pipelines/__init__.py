"""Step logic of the flight-delay MLOps pipeline: plain, typed functions that Airflow, DVC and the CLI all call."""
