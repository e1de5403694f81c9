"""Prefect tasks: run one stage locally or as a SkyPilot job, and log it to MLflow."""
