#!/usr/bin/env python3
"""Price of one FUSE round trip as Python pays it on every open: ioctl(TCGETS) (`isatty`)
on an open file, with WORK loop iterations of Python between calls (0: back to back; 2000:
about the gap between two imports), microseconds per call.

    benches/ioctl_rtt.py FILE...
    taskset -c 0 benches/ioctl_rtt.py MOUNT/f   # with the mount process on CPU 0 too
"""
import fcntl
import os
import sys
import termios
import time


def per_call(path, work, calls=5000):
    fd = os.open(path, os.O_RDONLY)
    total = 0.0
    for _ in range(calls):
        x = 0
        for k in range(work):
            x += k
        t = time.perf_counter()
        try:
            fcntl.ioctl(fd, termios.TCGETS, bytes(64))
        except OSError:
            pass  # ENOTTY: not a terminal, as expected
        total += time.perf_counter() - t
    os.close(fd)
    return total / calls * 1e6


def main():
    for work in (0, 2000):
        cells = ", ".join(f"{p}: {per_call(p, work):.1f}" for p in sys.argv[1:])
        print(f"work {work}: {cells} (µs per ioctl)")


if __name__ == "__main__":
    main()
