-- Databases for the compose stack, owned by POSTGRES_USER (mlops).
-- The postgres image runs this once, when its data volume is first initialised;
-- to re-run it, remove the volume: `docker compose down -v` (drops all data).
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
-- MLflow's basic-auth users and permissions, kept apart from tracking data.
CREATE DATABASE mlflow_auth;
