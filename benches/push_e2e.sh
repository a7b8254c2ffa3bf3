#!/usr/bin/env bash
# End-to-end push benchmark against a real HDFS (MiniDFS on loopback), with its baseline
# measured in the same run:
#   - initial `dagfs push` of N DAG-sized files (2-20 KB) vs `hadoop fs -put` of the same
#     folder (FsShell on the MiniDFS classpath, JVM start included), sequential and with
#     16 threads (dagfs uploads 16 objects at once);
#   - the same push without the plain mirror;
#   - a no-op `dagfs push` of the unchanged tree (warm hash cache) vs the initial push;
#   - `dagfs import` of the plain folder the baseline wrote, initial and unchanged.
# Usage: benches/push_e2e.sh [N]   (default N=10000). Prints a Markdown table.
# BASELINE_SEQUENTIAL=1 adds a one-thread `hadoop fs -put` (slow: ~0.2 s per file here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-10000}

cargo build --release --quiet
DAGFS=$PWD/target/release/dagfs
work=$(mktemp -d /tmp/dagfs-bench-XXXXXX)
export DAGFS_MINIDFS_DIR=$work/minidfs
cleanup() { scripts/minidfs stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

benches/make_tree.py "$work/dags" "$N"
bytes=$(du -sb "$work/dags" | cut -f1)

# --fast-close sets dfs.namenode.file.close.num-committed-allowed=1, which the NameNode
# ignores on this single-DataNode cluster (it needs more expected replicas than
# dfs.namenode.replication.min): a close's complete() still waits for the DataNode's block
# report, a few ms after the last ack (see BENCHMARKS.md, "Small-file closes").
scripts/minidfs start --fast-close >/dev/null
url=$(cat "$DAGFS_MINIDFS_DIR/url")
export DAGFS_STORE_HADOOP_CONF_DIR=$DAGFS_MINIDFS_DIR/conf DAGFS_STORE_USER=$(id -un)
export XDG_CACHE_HOME=$work/cache

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

t0=$(now); scripts/minidfs fs -put -t 16 "$work/dags" /baseline16; t1=$(now)
put=$(elapsed "$t0" "$t1")
put_seq=
if [[ -n ${BASELINE_SEQUENTIAL:-} ]]; then
  t0=$(now); scripts/minidfs fs -put "$work/dags" /baseline; t1=$(now)
  put_seq=$(elapsed "$t0" "$t1")
fi
rclone_row=
if command -v rclone >/dev/null; then
  # rclone's HDFS backend (a pure-Go client), configured through the environment.
  export RCLONE_CONFIG_MINIDFS_TYPE=hdfs RCLONE_CONFIG_MINIDFS_NAMENODE=${url#hdfs://}
  export RCLONE_CONFIG_MINIDFS_USERNAME=$(id -un)
  t0=$(now)
  if rclone -q sync --transfers 16 "$work/dags" minidfs:/rclone16 2>"$work/rclone.log"; then
    t1=$(now); rclone_row=$(elapsed "$t0" "$t1")
  else
    t1=$(now); rclone_row="failed after $(elapsed "$t0" "$t1") s: $(tail -n 1 "$work/rclone.log")"
    echo "rclone: $(tail -n 3 "$work/rclone.log")" >&2
  fi
fi
# The same push with hdfs-native's own 500 ms first retry of a refused complete.
t0=$(now); DAGFS_CONFIG=benches/close-500ms.toml "$DAGFS" -q push "$work/dags" --store "$url/dagfs-500ms" --no-mirror >/dev/null; t1=$(now)
push_500ms=$(elapsed "$t0" "$t1")
rm -rf "$XDG_CACHE_HOME"
t0=$(now); "$DAGFS" -q push "$work/dags" --store "$url/dagfs" --mirror >/dev/null; t1=$(now)
push=$(elapsed "$t0" "$t1")
rm -rf "$XDG_CACHE_HOME"
t0=$(now); "$DAGFS" -q push "$work/dags" --store "$url/dagfs-nomirror" --no-mirror >/dev/null; t1=$(now)
push_nomirror=$(elapsed "$t0" "$t1")
t0=$(now); "$DAGFS" -q push "$work/dags" --store "$url/dagfs" >/dev/null; t1=$(now)
noop=$(elapsed "$t0" "$t1")
rm -rf "$XDG_CACHE_HOME"
t0=$(now); "$DAGFS" -q push "$work/dags" --store "$url/dagfs" --no-mirror >/dev/null; t1=$(now)
noop_cold=$(elapsed "$t0" "$t1")
# dagfs import of the plain folder the baseline wrote (the NFS-gateway migration), no mirror.
t0=$(now); "$DAGFS" -q import "$url/baseline16" --store "$url/dagfs-import" --set publish.mirror=false >/dev/null; t1=$(now)
import=$(elapsed "$t0" "$t1")
t0=$(now); "$DAGFS" -q import "$url/baseline16" --store "$url/dagfs-import" --set publish.mirror=false >/dev/null; t1=$(now)
import_noop=$(elapsed "$t0" "$t1")

ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
echo "| $N files, $((bytes / 1024)) KiB | seconds | vs \`hadoop fs -put -t 16\` |"
echo "|---|---|---|"
echo "| \`hadoop fs -put -t 16\` (baseline: 16 threads, as dagfs uses) | $put | 1.00x |"
[[ -z $put_seq ]] || echo "| \`hadoop fs -put\` (one thread) | $put_seq | $(ratio "$put_seq" "$put") |"
case $rclone_row in
  "") ;;
  failed*) echo "| \`rclone sync --transfers 16\` | $rclone_row | - |" ;;
  *) echo "| \`rclone sync --transfers 16\` | $rclone_row | $(ratio "$rclone_row" "$put") |" ;;
esac
echo "| \`dagfs push\`, initial, no mirror, 500 ms close retry (hdfs-native's own) | $push_500ms | $(ratio "$push_500ms" "$put") |"
echo "| \`dagfs push\`, initial, with mirror | $push | $(ratio "$push" "$put") |"
echo "| \`dagfs push\`, initial, no mirror | $push_nomirror | $(ratio "$push_nomirror" "$put") |"
echo "| \`dagfs push\`, no change, warm hash cache | $noop | $(ratio "$noop" "$put") |"
echo "| \`dagfs push\`, no change, cold hash cache | $noop_cold | $(ratio "$noop_cold" "$put") |"
echo "| \`dagfs import\` of the baseline's folder, initial, no mirror | $import | $(ratio "$import" "$put") |"
echo "| \`dagfs import\`, no change (list, hash every file, list) | $import_noop | $(ratio "$import_noop" "$put") |"
