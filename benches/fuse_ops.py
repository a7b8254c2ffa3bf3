#!/usr/bin/env python3
"""Counts the FUSE requests a mount process received, by opcode, from an strace log of it.

    strace -f -p "$(pgrep -f 'dagfs mount')" -e trace=read -s 8 -xx -o LOG &
    ... run the workload, stop strace ...
    benches/fuse_ops.py LOG

Every request the kernel sends is one read(2) of /dev/fuse starting with a fuse_in_header
(u32 length, u32 opcode, little endian); `-s 8 -xx` prints exactly those 8 bytes.
"""
import collections
import re
import sys

OPCODES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 14: "OPEN",
    15: "READ", 16: "WRITE", 17: "STATFS", 18: "RELEASE", 22: "GETXATTR", 23: "LISTXATTR",
    25: "FLUSH", 26: "INIT", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 34: "ACCESS",
    36: "INTERRUPT", 39: "IOCTL", 40: "POLL", 42: "BATCH_FORGET", 44: "READDIRPLUS",
    46: "LSEEK", 52: "STATX",
}
HEADER = re.compile(r'read(?:\(\d+, | resumed>)"((?:\\x[0-9a-f]{2}){8})"')


def main():
    counts = collections.Counter()
    with open(sys.argv[1]) as log:
        for line in log:
            m = HEADER.search(line)
            if m:
                raw = bytes(int(h, 16) for h in m.group(1).split("\\x")[1:])
                op = int.from_bytes(raw[4:8], "little")
                counts[OPCODES.get(op, f"opcode {op}")] += 1
    for name, n in counts.most_common():
        print(f"{name:14} {n}")


if __name__ == "__main__":
    main()
