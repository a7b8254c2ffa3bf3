#!/usr/bin/env bash
# Resident memory of a real `dagfs mount` process over many generation switches.
#
# A local store (a plain path), a FILES-file tree, `dagfs mount` on a real FUSE mountpoint;
# then N rounds of: rewrite a few files (a marker file and 3 DAG files, new content every
# round, so every publish writes a new pack), `dagfs push`, and wait until the mount serves
# the new marker (read through the mountpoint: the switch happened). Every GC_EVERY rounds
# `dagfs gc --keep 2 --grace 0s` retires old generations and their packs (GC_EVERY=0: the
# store is never collected). The mount's VmRSS (/proc/PID/status) is sampled at round 0 and
# every STEP rounds.
#
# Usage: benches/mount_rss.sh [N] [FILES]   (defaults 10000 and 1000)
# Environment: GC_EVERY (100), STEP (N/10), KEEP_FOR (mount.keep_for, 5s: the default 1 h
# keeps every generation served within the hour, which this run compresses into minutes),
# DAGFS (a dagfs binary to measure instead of this tree's release build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-10000}
FILES=${2:-1000}
GC_EVERY=${GC_EVERY:-100}
STEP=${STEP:-$(( N >= 10 ? N / 10 : 1 ))}
KEEP_FOR=${KEEP_FOR:-5s}

if [[ -z ${DAGFS:-} ]]; then
  cargo build --release --quiet --bin dagfs
  DAGFS=$PWD/target/release/dagfs
fi
work=$(mktemp -d /tmp/dagfs-rss-XXXXXX)
export DAGFS_RUNTIME_DIR=$work/run XDG_CACHE_HOME=$work/xdg
export DAGFS_MOUNT_POLL=1s DAGFS_MOUNT_POLL_ACTIVE=5ms DAGFS_MOUNT_KEEP_FOR=$KEEP_FOR
mount_pid=
cleanup() {
  fusermount3 -u -z "$work/mnt" 2>/dev/null || true
  [[ -n $mount_pid ]] && kill "$mount_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

dags=$work/dags store=$work/store mnt=$work/mnt
benches/make_tree.py "$dags" $((FILES - 1)) >/dev/null
echo 0 > "$dags/switch.txt"
"$DAGFS" -q push "$dags" --store "$store" --no-mirror >/dev/null
mkdir -p "$mnt"
"$DAGFS" -q mount "$store" "$mnt" --cache-dir "$work/cache" 2>"$work/mount.log" &
mount_pid=$!

# Waits (deadline 60 s) until the mount serves marker $1.
served() {
  local deadline=$((SECONDS + 60))
  until [[ $(cat "$mnt/switch.txt" 2>/dev/null) == "$1" ]]; do
    if ((SECONDS > deadline)); then
      echo "the mount did not switch to round $1 within 60 s; its log:" >&2
      tail -20 "$work/mount.log" >&2
      exit 1
    fi
    sleep 0.002
  done
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$mount_pid/status"; }
served 0
[[ $(find "$mnt" -type f | wc -l) -eq $FILES ]] || { echo "the mount does not show $FILES files" >&2; exit 1; }

echo "| switches | mount VmRSS (KiB) | packs in the store | elapsed (s) |"
echo "|---|---|---|---|"
start=$SECONDS
sample() { echo "| $1 | $(rss) | $(find "$store/packs" -type f | wc -l) | $((SECONDS - start)) |"; }
sample 0
for ((i = 1; i <= N; i++)); do
  for k in 0 1 2; do
    j=$(( (i * 3 + k) % (FILES - 1) ))
    f=$dags/team_$((j % 20))/pkg_$((j % 7))/dag_$j.py
    { echo "# round $i"; tail -n +2 "$f"; } > "$f.new"
    mv "$f.new" "$f"
  done
  echo "$i" > "$dags/switch.txt"
  "$DAGFS" -q push "$dags" --store "$store" --no-mirror >/dev/null
  served "$i"
  if ((GC_EVERY > 0 && i % GC_EVERY == 0)); then
    "$DAGFS" -q gc --store "$store" --keep 2 --grace 0s >/dev/null
  fi
  if ((i % STEP == 0)); then sample "$i"; fi
done
# The mount serves the head, and every file of it.
head=$("$DAGFS" log --store "$store" -n 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["generation"])')
mounted=$("$DAGFS" status --json | python3 -c 'import json,sys; print([m.get("generation") for m in json.load(sys.stdin)["mount"]])' || echo "?")
echo "head generation $head; mount serves $mounted; files served: $(find "$mnt" -type f | wc -l)"
