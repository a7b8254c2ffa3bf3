#!/usr/bin/env bash
# Save-to-committed latency of `dagfs sync` against a real HDFS (MiniDFS on loopback).
#
# A daemon watches a folder of 100 DAG files; the script edits one file at a time (plain
# rewrite, as most editors and `git pull` do), and times from the end of the write to the
# moment the daemon's status file reports the new generation committed (it is written right
# after the commit's rename returns). Each edit waits for the previous one to be committed.
# Baseline, same run: `dagfs push` of one edited file, the command a cron job or a CI step
# would run instead (process start, scan with warm hash cache, publish).
#
# The same edits are also timed to the moment a `dagfs mount` of the store (mount.poll from
# MOUNT_POLL, default 1s) serves the new content: save-to-visible, what a scheduler sees.
#
# Each edit comes at a random moment (a pause of 0-500 ms after the previous one was seen,
# from SEED, printed), as a person saves: edits made right after a poll would fall in step
# with the mount's polls.
#
# Usage: benches/sync_latency.sh [EDITS] [QUIET_WINDOW]   (defaults: 200 edits, the daemon's
# sync.quiet_window)
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EDITS=${1:-200}
QUIET=${2:-}
SEED=${SEED:-$RANDOM}
echo "SEED=$SEED" >&2

cargo build --release --quiet
DAGFS=$PWD/target/release/dagfs
work=$(mktemp -d /tmp/dagfs-sync-bench-XXXXXX)
export DAGFS_MINIDFS_DIR=$work/minidfs
sync_pid=
mount_pid=
cleanup() {
  [[ -z $sync_pid ]] || kill "$sync_pid" 2>/dev/null || true
  [[ -z $mount_pid ]] || kill "$mount_pid" 2>/dev/null || true
  fusermount3 -u -z "$work/mnt" 2>/dev/null || true
  scripts/minidfs stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --fast-close: see benches/push_e2e.sh and BENCHMARKS.md (hdfs-native's 500 ms close retry).
scripts/minidfs start --fast-close >/dev/null
url=$(cat "$DAGFS_MINIDFS_DIR/url")
export DAGFS_STORE_HADOOP_CONF_DIR=$DAGFS_MINIDFS_DIR/conf DAGFS_STORE_USER=$(id -un)
export XDG_CACHE_HOME=$work/cache DAGFS_RUNTIME_DIR=$work/run
[[ -z $QUIET ]] || export DAGFS_SYNC_QUIET_WINDOW=$QUIET

mkdir -p "$work/dags" "$work/pushed"
for i in $(seq 0 99); do
  printf 'from airflow import DAG\n# dag %s\n%s\n' "$i" "$(head -c 3000 /dev/zero | tr '\0' x)" \
    | tee "$work/dags/dag_$i.py" >"$work/pushed/dag_$i.py"
done

# SYNC_FLAGS adds flags to the daemon, e.g. SYNC_FLAGS=--no-mirror.
"$DAGFS" -q sync "$work/dags" --store "$url/sync" ${SYNC_FLAGS:-} 2>"$work/sync.log" &
sync_pid=$!
mkdir -p "$work/mnt"
"$DAGFS" -q mount "$url/sync" "$work/mnt" --poll "${MOUNT_POLL:-1s}" --cache-dir "$work/mount-cache" 2>"$work/mount.log" &
mount_pid=$!

python3 - "$work" "$EDITS" "$DAGFS" "$url/push" "$SEED" <<'PY'
import glob, json, os, random, statistics, subprocess, sys, time

work, edits, dagfs, push_url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pause = random.Random(int(sys.argv[5]))

def visible(rel, marker, limit=60.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with open(os.path.join(work, "mnt", rel)) as f:
                if marker in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.002)
    sys.exit(f"never visible on the mount; log: {open(os.path.join(work, 'mount.log')).read()[-3000:]}")

def state():
    for path in glob.glob(os.path.join(work, "run", "sync-*.json")):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass  # being replaced: read again
    return None

def wait(pred, limit=60.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        s = state()
        if s is not None and pred(s):
            return s
        time.sleep(0.002)
    sys.exit(f"timed out; daemon log: {open(os.path.join(work, 'sync.log')).read()[-3000:]}")

idle = lambda s: s["phase"] == "idle" and s["pending_changes"] == 0
generation = wait(lambda s: idle(s) and s["generation"] is not None)["generation"]

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]

latencies, seen = [], []
for i in range(edits):
    time.sleep(pause.uniform(0, 0.5))
    rel = f"dag_{i % 100}.py"
    with open(os.path.join(work, "dags", rel), "a") as f:
        f.write(f"# edit {i}\n")
    saved = time.monotonic()
    s = wait(lambda s: s["generation"] is not None and s["generation"] > generation)
    latencies.append(time.monotonic() - saved)
    visible(rel, f"# edit {i}\n")
    seen.append(time.monotonic() - saved)
    generation = s["generation"]
    wait(idle)

pushes = []
for i in range(20):
    with open(os.path.join(work, "pushed", f"dag_{i}.py"), "a") as f:
        f.write(f"# edit {i}\n")
    started = time.monotonic()
    subprocess.run([dagfs, "-q", "push", os.path.join(work, "pushed"), "--store", push_url],
                   check=True, stdout=subprocess.DEVNULL)
    pushes.append(time.monotonic() - started)

base = statistics.median(pushes)
print(f"| {edits} edits, one file each | p50 | p90 | p99 | max | mean | p50 vs baseline |")
print("|---|---|---|---|---|---|---|")
row = lambda name, v, ratio: print(
    f"| {name} | {pct(v, 50):.3f} | {pct(v, 90):.3f} | {pct(v, 99):.3f} | {max(v):.3f} | "
    f"{statistics.mean(v):.3f} | {ratio} |")
row("`dagfs push` of one edit (baseline, 20 runs)", pushes, "1.00x")
row("`dagfs sync`: save to committed", latencies, f"{pct(latencies, 50) / base:.2f}x")
row("save to visible on a `dagfs mount`", seen, f"{pct(seen, 50) / base:.2f}x")
PY
