#!/bin/bash
# Entrypoint of the scheduler image (under tini). With arguments it runs them as they are:
# a worker (`airflow celery worker`), the api-server (`airflow api-server`), or a one-off
# (`airflow db migrate`). Without arguments it is a scheduler host:
#
#   1. `dagfs mount` serves the committed DAG generation at $DAGFS_MOUNTPOINT, as a FUSE
#      mount (DAGFS_MOUNT_MODE=fuse, the default: needs --device /dev/fuse --cap-add
#      SYS_ADMIN) or in link mode (DAGFS_MOUNT_MODE=link: no device, no capabilities;
#      Airflow reads $DAGFS_MOUNTPOINT/current);
#   2. `dagfs failover` runs the Airflow 3 unit (scheduler, DAG processor, triggerer), gated
#      on the mount serving the head: in every container (failover.mode = all-active, the
#      default), or while this container holds the scheduler lease
#      (DAGFS_FAILOVER_MODE=single-active).
#
# SIGTERM (`docker stop`): the controller stops the unit and releases the lease (a standby
# takes over at once), then the mount stops (FUSE: unmounted). Keep `docker stop -t` above
# failover.kill_grace plus a few seconds (the default 10 s fits the default 5 s grace).
#
# The image runs as airflow (uid 50000), which can mount FUSE where /dev/fuse is open to all
# (mode 0666, the usual). Where it is not, start the container as root (`--user 0`): the
# mount then runs as root with --allow-other (link mode: root-owned, read-only hard links),
# and everything else as airflow.
#
#   DAGFS_STORE_URL    the store, e.g. hdfs://prod-ns/airflow/dagfs (required)
#   DAGFS_MOUNTPOINT   default /opt/airflow/dags
#   DAGFS_IMAGE_MOUNT_ARGS     extra `dagfs mount` flags, e.g. --pin 42 --metrics 0.0.0.0:9101
#   DAGFS_IMAGE_FAILOVER_ARGS  extra `dagfs failover` flags, e.g. --id scheduler-1
# (DAGFS_IMAGE_* are this script's own: a DAGFS_MOUNT_*/DAGFS_FAILOVER_* name would be read
# by dagfs as a configuration key and refused.)
# Any DAGFS_<SECTION>_<KEY> variable sets a dagfs configuration key (DAGFS_STORE_USER,
# DAGFS_MOUNT_MODE...). Unless set, Airflow's dags_folder is the served tree and its DAG
# bundle is the dagfs bundle over this store and mount (AIRFLOW__DAG_PROCESSOR__
# DAG_BUNDLE_CONFIG_LIST, with AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL=0).
set -euo pipefail
as_airflow=()
mount_flags=()
if [[ $(id -u) == 0 ]]; then
  as_airflow=(setpriv --reuid=airflow --regid=0 --init-groups env HOME=/opt/airflow)
  mount_flags=(--allow-other)
fi
if (($#)); then
  exec "${as_airflow[@]}" "$@"
fi
: "${DAGFS_STORE_URL:?set DAGFS_STORE_URL to the dagfs store, e.g. hdfs://prod-ns/airflow/dagfs}"
dir=${DAGFS_MOUNTPOINT:-/opt/airflow/dags}
case ${DAGFS_MOUNT_MODE:-fuse} in
  link) served=$dir/current ;;
  fuse) served=$dir ;;
  *) echo "dagfs-scheduler: DAGFS_MOUNT_MODE must be fuse or link" >&2; exit 2 ;;
esac
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$served}"
bundles=$(printf '[{"name": "dags", "classpath": "dagfs_airflow.DagfsBundle", "kwargs": {"store_url": "%s", "mount": "%s"}}]' "$DAGFS_STORE_URL" "$dir")
export AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST="${AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST:-$bundles}"
# The bundle refuses to parse under Airflow's rate limit on serialized DAGs (a run could
# record a new generation with the previous one's tasks).
export AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL="${AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL:-0}"
# The mount's state file is read (and the controller's written) here by both users.
runtime=${DAGFS_RUNTIME_DIR:-/opt/airflow/run}
mkdir -p "$runtime" "$dir"
[[ $(id -u) == 0 ]] && chown airflow:0 "$runtime" && chmod 775 "$runtime"

# shellcheck disable=SC2086 # DAGFS_IMAGE_MOUNT_ARGS is a list of flags
dagfs mount --store "$DAGFS_STORE_URL" "$dir" --cache-dir /var/cache/dagfs "${mount_flags[@]}" ${DAGFS_IMAGE_MOUNT_ARGS:-} &
mount_pid=$!
# shellcheck disable=SC2086 # flags
"${as_airflow[@]}" dagfs failover --store "$DAGFS_STORE_URL" --mount "$dir" ${DAGFS_IMAGE_FAILOVER_ARGS:-} \
  --run "airflow scheduler" --run "airflow dag-processor" --run "airflow triggerer" &
failover_pid=$!

stop() {
  kill -TERM "$failover_pid" 2>/dev/null || true
  wait "$failover_pid" 2>/dev/null || true
  kill -TERM "$mount_pid" 2>/dev/null || true
  wait "$mount_pid" 2>/dev/null || true
}
trap 'stop; exit 143' TERM INT

# Whichever ends first ends the container (the orchestrator restarts it); the other follows.
# `wait -n` returns when either exits, or at once when a trapped signal arrives.
status=0
wait -n "$failover_pid" "$mount_pid" || status=$?
stop
exit "$status"
