-- A second database for MLflow's basic-auth users and permissions.
CREATE DATABASE mlflow_auth OWNER mlflow;
