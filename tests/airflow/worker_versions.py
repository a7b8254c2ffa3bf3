#!/usr/bin/env python3
"""Initialises the dagfs bundle as a worker would for each version given, one process per
version (as each task runs in its own process), and prints after each: the version, the
bytes of the files under the bundle storage, and the number of checkouts kept; at the end,
the bytes per directory on stderr.

    worker_versions.py STORE_URL DAGFS KEEP_CHECKOUTS VERSION...

Needs AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH. Each generation holds `gen.txt` with
its number; a checkout holding anything else fails the run.
"""
import os
import sys

from dagfs_airflow import DagfsBundle


def disk_use(path):
    """Bytes of the files under `path` (directories are left out: the cache's 256 fan-out
    directories fill up over the first generations, a bounded cost)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def main():
    url, dagfs, keep, versions = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    storage = os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH"]
    for version in versions:
        pid = os.fork()
        if pid == 0:
            bundle = DagfsBundle(name="dags", store_url=url, version=version, dagfs=dagfs, keep_checkouts=keep)
            bundle.initialize()
            ok = (bundle.path / "gen.txt").read_text().strip() == version.split("-")[0]
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            print("FAILED", version, status, flush=True)
            sys.exit(1)
        checkouts = os.path.join(storage, "dags", "dagfs-checkouts")
        kept = len([p for p in os.listdir(checkouts) if p.isdigit()])
        print(version, disk_use(storage), kept, flush=True)
    for root, _, files in os.walk(storage):
        if root[len(storage) :].count(os.sep) <= 3:
            print(root, disk_use(root), len(files), file=sys.stderr)


if __name__ == "__main__":
    main()
