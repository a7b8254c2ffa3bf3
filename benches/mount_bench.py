#!/usr/bin/env python3
"""Warm-path timings of one tree on local disk and through a dagfs mount, same run.

    mount_bench.py LOCAL_DIR MOUNT_DIR

Prints one JSON object: for each measurement the best of several rounds, local and mount,
in seconds; for the imports (without bytecode, and with a local PYTHONPYCACHEPREFIX), the
medians of IMPORT_PAIRS (default 9) interleaved runs and the ratio of each pair. Every round
runs after a first untimed pass, so both sides are warm (page cache for the local disk;
kernel and dagfs caches for the mount).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def files(root):
    out = []
    for d, _, names in os.walk(root):
        out.extend(os.path.join(d, n) for n in names)
    return sorted(os.path.relpath(p, root) for p in out)


def best(fn, rounds=5):
    fn()  # warm up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def stat_all(root, rel):
    def run():
        for p in rel:
            os.stat(os.path.join(root, p))
    return run


def read_all(root, rel):
    def run():
        for p in rel:
            fd = os.open(os.path.join(root, p), os.O_RDONLY)
            while os.read(fd, 1 << 20):
                pass
            os.close(fd)
    return run


def python_read_all(root, rel):
    """Python's open(): CPython < 3.14 asks every file it opens whether it is a terminal
    (an ioctl, which FUSE always sends to the filesystem: one round trip per open)."""
    def run():
        for p in rel:
            with open(os.path.join(root, p), "rb") as f:
                f.read()
    return run


IMPORT = """
import importlib, sys, time
sys.path.insert(0, sys.argv[1])
t = time.perf_counter()
for i in range(int(sys.argv[2])):
    importlib.import_module(f"mods.m{i}")
print(time.perf_counter() - t)
"""


def import_modules(root, count, pycache=None):
    """Without `pycache`: no bytecode cache, every module is found, read and compiled, as the
    DAG processor does on a read-only mount without PYTHONPYCACHEPREFIX. With it: bytecode
    from that local directory (written by the first run), as operators configure it."""
    def run():
        env = dict(os.environ)
        if pycache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
            flags = []
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
            flags = ["-B"]
        out = subprocess.run([sys.executable, *flags, "-c", IMPORT, root, str(count)],
                             check=True, capture_output=True, text=True, env=env)
        return float(out.stdout)
    return run


def import_pairs(local, mount, count, pycache=None):
    """Fresh interpreters importing `count` modules, local and mount in interleaved pairs (in
    alternating order, so a burst of load from other processes hits both sides alike), after
    one untimed run each: the medians, and the ratio of every pair (the spread is the
    machine's noise)."""
    imp_local = import_modules(local, count, pycache)
    imp_mount = import_modules(mount, count, pycache)
    imp_local(), imp_mount()
    pairs = []
    for i in range(int(os.environ.get("IMPORT_PAIRS", "9"))):
        if i % 2:
            m = imp_mount()
            pairs.append((imp_local(), m))
        else:
            pairs.append((imp_local(), imp_mount()))
    return {
        "times": [statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)],
        "ratios": [round(m / l, 2) for l, m in pairs],
        "ratio_median": statistics.median(m / l for l, m in pairs),
    }


def main():
    local, mount = sys.argv[1], sys.argv[2]
    rel = files(local)
    assert rel == files(mount), "the mount does not show the local tree"
    result = {"files": len(rel)}
    result["stat"] = [best(stat_all(local, rel)), best(stat_all(mount, rel))]
    result["read"] = [best(read_all(local, rel)), best(read_all(mount, rel))]
    result["python_read"] = [best(python_read_all(local, rel)), best(python_read_all(mount, rel))]
    modules = len([p for p in rel if p.startswith("mods/m")])
    if modules:
        result["import"] = import_pairs(local, mount, modules)
        with tempfile.TemporaryDirectory() as pycache:
            result["import_pycache"] = import_pairs(local, mount, modules, pycache)
        result["modules"] = modules
    print(json.dumps(result))


if __name__ == "__main__":
    main()
