#!/usr/bin/env bash
# Installs what a dagfs scheduler host runs: fuse3, the dagfs Debian package, and Apache
# Airflow in a virtualenv built from the project's one pinned requirements file
# (tests/airflow/requirements.txt, through scripts/airflow-venv). The scheduler image's
# Dockerfile runs exactly this script; CI runs it into a scratch prefix, so the recipe is
# never untested.
#
#   install.sh [--deb FILE | --no-deb] [--prefix DIR] [--venv DIR]
#
#   --deb FILE     the package (default: the one target/debian/dagfs_*.deb of this tree)
#   --no-deb       only the system packages, the user and Airflow (the image's cached layer:
#                  Airflow changes rarely, dagfs with every build); run again to finish
#   --prefix DIR   install root (default /). With /, apt installs the .deb (which pulls in
#                  fuse3), python3-venv and tini, and the `airflow` user is created. With
#                  another DIR, the .deb is unpacked there with `dpkg -x`, fuse3 and
#                  python3-venv must already be installed (scripts/install-deps does), and no
#                  user is created.
#   --venv DIR     Airflow's virtualenv (default PREFIX/opt/airflow/venv), created or refreshed
#                  by scripts/airflow-venv. CI passes the venv its Airflow tests already use,
#                  so the pinned install runs once per CI run.
#   AIRFLOW_UID, AIRFLOW_GID (environment, with prefix /): the airflow user's uid and group
#                  (the image: 50000 and 0, as the official Airflow image; default: a system
#                  user and group). Its directories are group-writable for group 0 images.
#
# Result under the prefix: /usr/bin/dagfs, the systemd units, /etc/dagfs/*.example,
# /opt/airflow/venv (Airflow, unless --venv), /opt/airflow/airflow.cfg (from
# packaging/airflow.cfg.example, if none is there), /usr/local/bin/dagfs-scheduler (the
# image's entrypoint). Ends by checking that dagfs and Airflow run and that Airflow reads
# and accepts the configuration (`airflow config lint`).
set -euo pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }

deb=
prefix=/
venv=
while (($#)); do
  case $1 in
    --deb) deb=${2:?--deb needs a file}; shift 2 ;;
    --no-deb) deb=none; shift ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --venv) venv=${2:?--venv needs a directory}; shift 2 ;;
    *) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
if [[ -z $deb ]]; then
  shopt -s nullglob
  debs=("$SRC"/target/debian/dagfs_*.deb)
  ((${#debs[@]} == 1)) || die "expected one target/debian/dagfs_*.deb, found ${#debs[@]}; build it with scripts/package or pass --deb FILE"
  deb=${debs[0]}
fi
[[ $deb == none || -f $deb ]] || die "$deb: no such package; build it with scripts/package"
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
root=${prefix%/}

if [[ $prefix == / ]]; then
  [[ $(id -u) -eq 0 ]] || die "installing into / needs root (or pass --prefix DIR)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # python3-venv for Airflow, tini as the container's init, libgssapi for Kerberized HDFS,
  # fuse3 for the mount (the .deb depends on it too).
  package=("$deb")
  [[ $deb == none ]] && package=()
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv ca-certificates tini libgssapi-krb5-2 fuse3 "${package[@]}" >/dev/null
  rm -rf /var/lib/apt/lists/*
  getent passwd airflow >/dev/null ||
    useradd --system ${AIRFLOW_UID:+--uid "$AIRFLOW_UID"} ${AIRFLOW_GID:+--gid "$AIRFLOW_GID"} \
      --create-home --home-dir /opt/airflow --shell /usr/sbin/nologin airflow
else
  command -v fusermount3 >/dev/null || die "fusermount3 not found: install fuse3 (scripts/install-deps)"
  [[ $deb == none ]] || dpkg -x "$deb" "$prefix"
fi

airflow_home=$root/opt/airflow
venv=${venv:-$airflow_home/venv}
mkdir -p "$airflow_home" "$root/usr/local/bin"
DAGFS_AIRFLOW_VENV=$venv "$SRC/scripts/airflow-venv" >/dev/null
if [[ $deb == none ]]; then
  echo "install.sh: installed everything but dagfs (Airflow $("$venv/bin/airflow" version)) under $prefix"
  exit 0
fi
[[ -f $airflow_home/airflow.cfg ]] || install -m 644 "$SRC/packaging/airflow.cfg.example" "$airflow_home/airflow.cfg"
install -m 755 "$SRC/packaging/scheduler-image/entrypoint.sh" "$root/usr/local/bin/dagfs-scheduler"
install -d "$airflow_home/dags"
if [[ $prefix == / ]]; then
  group=$(id -gn airflow)
  install -d -o airflow -g "$group" -m 775 /var/cache/dagfs /opt/airflow/pycache /opt/airflow/logs
  chown airflow:"$group" /opt/airflow /opt/airflow/dags /opt/airflow/airflow.cfg
  chmod g+w /opt/airflow /opt/airflow/dags
fi

# The installation works: both programs run, and Airflow reads the configuration fragment.
"$root/usr/bin/dagfs" --version >/dev/null || die "$root/usr/bin/dagfs does not run"
airflow_version=$("$venv/bin/airflow" version) || die "airflow does not run"
dags_folder=$(AIRFLOW_HOME=$airflow_home "$venv/bin/airflow" config get-value core dags_folder) ||
  die "airflow cannot read $airflow_home/airflow.cfg"
[[ $dags_folder == /opt/airflow/dags ]] ||
  die "airflow reads dags_folder = $dags_folder from $airflow_home/airflow.cfg, expected /opt/airflow/dags"
lint=$(AIRFLOW_HOME=$airflow_home "$venv/bin/airflow" config lint 2>&1) ||
  die "airflow config lint failed: $lint"
[[ $lint == *"No issues found"* ]] || die "airflow config lint finds issues in $airflow_home/airflow.cfg: $lint"
echo "install.sh: installed $(basename "$deb") and Airflow $airflow_version under $prefix"
