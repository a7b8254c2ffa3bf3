#!/usr/bin/env python3
"""Writes a realistic Airflow DAG folder for tests and benchmarks.

    make_dags.py DIR [N]

N DAG files (default 60) spread over team folders, a shared helper package the DAGs import
(kept out of parsing by .airflowignore, as many deployments do), an .airflowignore'd scratch
folder, and two files that fail to import (a syntax error and a missing module), so a
listing shows both DAGs and import errors.
"""
import os
import sys

TEMPLATE = '''\
"""Team {team} pipeline {i}."""
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator

from common.helpers import describe

with DAG(
    dag_id="team{team}_pipeline_{i:04d}",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule={schedule!r},
    catchup=False,
    tags=["team{team}"],
):
    extract = BashOperator(task_id="extract", bash_command="echo extract {i}")
    transform = PythonOperator(task_id="transform", python_callable=describe, op_args=[{i}])
    extract >> transform
'''


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    root = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    write(os.path.join(root, "common", "__init__.py"), "")
    write(
        os.path.join(root, "common", "helpers.py"),
        "def describe(i):\n    return f'pipeline {i}'\n",
    )
    schedules = [None, "@daily", "@hourly", "0 3 * * *"]
    for i in range(count):
        team = i % 5
        write(
            os.path.join(root, f"team{team}", f"pipeline_{i:04d}.py"),
            TEMPLATE.format(team=team, i=i, schedule=schedules[i % len(schedules)]),
        )
    write(os.path.join(root, "broken", "syntax_error.py"), "from airflow.sdk import DAG\nthis is not python\n")
    write(os.path.join(root, "broken", "missing_module.py"), "from airflow.sdk import DAG\nimport no_such_module_dagfs\n")
    write(os.path.join(root, ".airflowignore"), "common/\nscratch/\n")
    write(os.path.join(root, "scratch", "wip.py"), "raise RuntimeError('ignored by .airflowignore')\n")


if __name__ == "__main__":
    main()
