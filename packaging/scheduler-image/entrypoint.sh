#!/bin/sh
# Entrypoint of the scheduler image: serves the committed DAG generation at $DAGFS_MOUNTPOINT
# (dagfs mount) and runs the Airflow 3 unit (scheduler, DAG processor, triggerer) while this
# container holds the scheduler lease (dagfs failover). Stops them, and unmounts, on SIGTERM.
# The api-server runs in its own container (any number of them).
#
#   DAGFS_STORE_URL    the store, e.g. hdfs://prod-ns/airflow/dagfs (required)
#   DAGFS_MOUNTPOINT   default /opt/airflow/dags (Airflow's dags_folder)
#   DAGFS_MOUNT_ARGS   extra `dagfs mount` flags, e.g. --pin 42
# Any DAGFS_<SECTION>_<KEY> variable sets a dagfs configuration key (DAGFS_STORE_USER...).
set -eu
: "${DAGFS_STORE_URL:?set DAGFS_STORE_URL to the dagfs store, e.g. hdfs://prod-ns/airflow/dagfs}"
mountpoint=${DAGFS_MOUNTPOINT:-/opt/airflow/dags}

# shellcheck disable=SC2086 # DAGFS_MOUNT_ARGS is a list of flags
dagfs mount "$DAGFS_STORE_URL" "$mountpoint" --cache-dir /var/cache/dagfs ${DAGFS_MOUNT_ARGS:-} &
mount_pid=$!
dagfs failover --store "$DAGFS_STORE_URL" --mount "$mountpoint" \
  --run "airflow scheduler" --run "airflow dag-processor" --run "airflow triggerer" &
failover_pid=$!

stop() {
  kill -TERM "$failover_pid" 2>/dev/null || true
  wait "$failover_pid" 2>/dev/null || true
  fusermount3 -u "$mountpoint" 2>/dev/null || kill -TERM "$mount_pid" 2>/dev/null || true
  wait "$mount_pid" 2>/dev/null || true
}
trap 'stop; exit 143' TERM INT

# Whichever ends first ends the container (the orchestrator restarts it); the other follows.
while kill -0 "$failover_pid" 2>/dev/null && kill -0 "$mount_pid" 2>/dev/null; do
  sleep 1
done
status=0
wait "$failover_pid" || status=$?
stop
exit "$status"
