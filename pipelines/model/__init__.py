"""The model: the feature spec's helpers (``features``), the wide & deep network and its
preprocessing layers (``network``), the tf.data input (``tfdata``) and the MLflow pyfunc
wrapper that serves raw rows (``pyfunc``). Nothing here knows about Airflow or runs."""
