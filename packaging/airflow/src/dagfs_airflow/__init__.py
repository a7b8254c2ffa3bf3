"""Airflow 3 DAG bundle backed by dagfs generations."""

from dagfs_airflow.bundle import DagfsBundle, DagfsBundleError

__all__ = ["DagfsBundle", "DagfsBundleError"]
