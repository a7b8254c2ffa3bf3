#!/usr/bin/env bash
# End-to-end mount benchmark against a real HDFS (MiniDFS on loopback), every number a ratio
# against a baseline measured in the same run:
#   - warm `stat` and warm read of every file, and a fresh Python importing 1,000 modules:
#     the mount vs the same files on local disk (benches/mount_bench.py);
#   - `airflow dags list --local` over 200 real DAGs: mount vs local disk;
#   - cold start, empty cache, to a first full listing: `dagfs mount` vs `hadoop fs -get` of
#     the whole store, whatever its format holds (format 2: manifests and packs; FsShell, JVM
#     start included);
#   - resident memory of the mount process serving N files.
#   - with PREVIOUS=/path/to/an/older/dagfs: the same cold start by that binary, from a store
#     it pushed itself (the previous release: format 1, one HDFS file per object).
# Usage: [PREVIOUS=EXE] benches/mount_e2e.sh [N]   (default N=10000; 1,000 of them are the
# import modules).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-10000}
MODULES=1000

cargo build --release --quiet
DAGFS=$PWD/target/release/dagfs
VENV=$(scripts/airflow-venv)
work=$(mktemp -d /tmp/dagfs-bench-XXXXXX)
export DAGFS_MINIDFS_DIR=$work/minidfs DAGFS_RUNTIME_DIR=$work/run XDG_CACHE_HOME=$work/xdg
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do fusermount3 -u -z "$m" 2>/dev/null || true; done
  pkill -f "$DAGFS mount" 2>/dev/null || true
  scripts/minidfs stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

benches/make_tree.py "$work/dags" $((N - MODULES)) $MODULES
tests/airflow/make_dags.py "$work/airflow-dags" 200
scripts/minidfs start --fast-close >/dev/null
url=$(cat "$DAGFS_MINIDFS_DIR/url")
export DAGFS_STORE_HADOOP_CONF_DIR=$DAGFS_MINIDFS_DIR/conf DAGFS_STORE_USER=$(id -un)
"$DAGFS" -q push "$work/dags" --store "$url/dags" --no-mirror
"$DAGFS" -q push "$work/airflow-dags" --store "$url/airflow" --no-mirror

now() { date +%s.%N; }
count_files() { find "$1" -type f | wc -l; }
expected=$(count_files "$work/dags")

# Cold: hadoop fs -get of the store's bytes vs dagfs mount with an empty cache.
t0=$(now); scripts/minidfs fs -get /dags "$work/get" >/dev/null; t1=$(now)
get=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
mkdir -p "$work/mnt" "$work/amnt" "$work/pmnt"; mounts=("$work/mnt" "$work/amnt" "$work/pmnt")
# Seconds from starting `$1 mount $2` at $3 (cache $4) to a full listing; leaves it running
# as $mount_pid.
cold_start() {
  local t0 t1
  t0=$(now)
  "$1" -q mount "$2" "$3" --cache-dir "$4" >/dev/null &
  mount_pid=$!
  until [[ -d $3/mods ]] && [[ $(count_files "$3") -eq $expected ]]; do sleep 0.05; done
  t1=$(now)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}
previous=-
if [[ -n ${PREVIOUS:-} ]]; then
  "$PREVIOUS" -q push "$work/dags" --store "$url/dags-previous" --no-mirror
  cold_start "$PREVIOUS" "$url/dags-previous" "$work/pmnt" "$work/pcache" >"$work/previous"
  previous=$(cat "$work/previous")
  kill "$mount_pid"; wait "$mount_pid" || true
fi
cold_start "$DAGFS" "$url/dags" "$work/mnt" "$work/cache" >"$work/cold"
cold=$(cat "$work/cold")

warm=$(python3 benches/mount_bench.py "$work/dags" "$work/mnt")
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$mount_pid/status")

"$DAGFS" -q mount "$url/airflow" "$work/amnt" --cache-dir "$work/acache" &
until [[ -f $work/amnt/.airflowignore ]]; do sleep 0.05; done
export AIRFLOW_HOME=$work/airflow-home AIRFLOW__CORE__LOAD_EXAMPLES=False PYTHONPYCACHEPREFIX=$work/pycache
"$VENV/bin/airflow" db migrate >/dev/null 2>&1
airflow_list() {
  local best=
  for _ in 1 2 3; do
    local t0 t1
    t0=$(now)
    # --bundle-name dags-folder: parsed as the DAG processor parses (the folder on sys.path
    # for the DAGs' shared helpers), with no PYTHONPATH.
    AIRFLOW__CORE__DAGS_FOLDER=$1 "$VENV/bin/airflow" dags list -l --bundle-name dags-folder -o json >/dev/null 2>&1
    t1=$(now)
    best=$(python3 -c "b='$best'; t=$t1 - $t0; print(f'{min(t, float(b)) if b else t:.2f}')")
  done
  echo "$best"
}
af_local=$(airflow_list "$work/airflow-dags")
af_mount=$(airflow_list "$work/amnt")

python3 - "$warm" "$get" "$cold" "$rss_kb" "$af_local" "$af_mount" "$previous" <<'PY'
import json, sys
w = json.loads(sys.argv[1])
get, cold, rss_kb, af_local, af_mount = map(float, sys.argv[2:7])
previous = None if sys.argv[7] == "-" else float(sys.argv[7])
def row(name, local, mount, unit="s"):
    print(f"| {name} | {local:.3f} {unit} | {mount:.3f} {unit} | {mount / local:.2f}x |")
print(f"| {w['files']} files | baseline | dagfs mount | ratio |")
print("|---|---|---|---|")
row(f"warm `stat` of every file (local disk)", *w["stat"])
row(f"warm read of every file, open/read/close (local disk)", *w["read"])
row(f"warm read of every file, Python open().read() (local disk)", *w["python_read"])
for key, what in (("import", "fresh python -B"), ("import_pycache", "bytecode in a local PYTHONPYCACHEPREFIX")):
    i = w[key]
    print(f"| import {w['modules']} modules, {what}: medians of pairs (local disk) "
          f"| {i['times'][0]:.3f} s | {i['times'][1]:.3f} s "
          f"| {i['ratio_median']:.2f}x (pairs: {', '.join(f'{r:.2f}' for r in i['ratios'])}) |")
row("`airflow dags list --local`, 200 DAGs (local disk)", af_local, af_mount)
row("cold: empty cache to full listing (`hadoop fs -get` of the store)", get, cold)
if previous is not None:
    row("cold: empty cache to full listing (the PREVIOUS binary, its own store)", previous, cold)
print(f"| mount process RSS serving {w['files']} files | | {rss_kb / 1024:.1f} MiB | |")
PY
