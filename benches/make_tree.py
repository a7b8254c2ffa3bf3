#!/usr/bin/env python3
"""Writes N DAG-sized files (2-20 KB, seeded, reproducible) for the end-to-end benchmarks.

    make_tree.py DIR N [MODULES]

N files under team_*/pkg_*/ and, with MODULES > 0, that many small importable Python modules
under mods/ (for import benchmarks).
"""
import os
import random
import sys


def main():
    root, n = sys.argv[1], int(sys.argv[2])
    modules = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    rng = random.Random(42)
    for i in range(n):
        d = os.path.join(root, f"team_{i % 20}", f"pkg_{i % 7}")
        os.makedirs(d, exist_ok=True)
        size = rng.randint(2048, 20480)
        lines = ["from airflow import DAG", "from airflow.operators.bash import BashOperator", ""]
        while sum(len(l) + 1 for l in lines) < size:
            k = len(lines)
            lines.append(f"task_{i}_{k} = BashOperator(task_id='t{k}', bash_command='echo {rng.random()}')")
        with open(os.path.join(d, f"dag_{i}.py"), "w") as f:
            f.write("\n".join(lines)[:size])
    if modules:
        d = os.path.join(root, "mods")
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "__init__.py"), "w").close()
        for i in range(modules):
            body = "".join(f"def f{k}(x):\n    return x * {k} + {i}\n\n" for k in range(20))
            with open(os.path.join(d, f"m{i}.py"), "w") as f:
                f.write(f'"""Module {i}."""\nVALUE = {i}\n\n' + body)


if __name__ == "__main__":
    main()
