"""`DagfsBundle`: a versioned Airflow DAG bundle whose versions are dagfs generations.

- DAG processor (no version): `path` is the dagfs mount (or, without a mount, a checkout of the
  head); `get_current_version()` is the generation the mount serves, read from the mount's
  state file (never guessed); `refresh()` waits, bounded, until the mount serves the head.
- Worker (with a version): `path` is a checkout of exactly that generation under the bundle's
  versions directory, made by `dagfs checkout`, which verifies it against the generation's
  tree id and renames it into place only when complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

try:  # Airflow >= 3.3: structured versions.
    from airflow.dag_processing.bundles.base import BundleVersion
except ImportError:  # pragma: no cover - older Airflow 3 takes plain strings
    BundleVersion = None


class DagfsBundleError(RuntimeError):
    """A dagfs operation the bundle needs failed; the message says what and how to fix it."""


def runtime_dir() -> Path:
    """Where dagfs mounts write their state files (the same rule as `dagfs mount`)."""
    if os.environ.get("DAGFS_RUNTIME_DIR"):
        return Path(os.environ["DAGFS_RUNTIME_DIR"])
    if os.getuid() == 0:
        return Path("/run/dagfs")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "dagfs"
    return Path("/tmp") / f"dagfs-{os.getuid()}"


def escape_path(path: str) -> str:
    """`systemd-escape --path`, as dagfs names mount state files."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "-"
    out = []
    for i, part in enumerate(parts):
        chars = []
        for j, b in enumerate(part.encode()):
            c = chr(b)
            plain = (c.isascii() and c.isalnum()) or c == "_" or (c == "." and not (i == 0 and j == 0))
            chars.append(c if plain else f"\\x{b:02x}")
        out.append("".join(chars))
    return "-".join(out)


def mount_state(mountpoint: str) -> dict:
    """The state of the dagfs mount at `mountpoint`; raises if no live mount serves it."""
    absolute = os.path.abspath(mountpoint)
    path = runtime_dir() / f"mount-{escape_path(absolute)}.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise DagfsBundleError(
            f"no dagfs mount is running at {absolute} (no state file {path}); "
            f"start it with `dagfs mount URL {absolute}`"
        ) from None
    except (OSError, ValueError) as e:
        raise DagfsBundleError(f"cannot read dagfs mount state {path}: {e}") from None
    if not Path(f"/proc/{state['pid']}").exists():
        raise DagfsBundleError(f"the dagfs mount at {absolute} is not running (pid {state['pid']} exited); restart it")
    return state


class DagfsBundle(BaseDagBundle):
    """A DAG bundle whose versions are dagfs generations.

    :param store_url: the dagfs store (``hdfs://...``), as given to ``dagfs mount``.
    :param mount: the dagfs mountpoint the DAG processor reads; without it the bundle checks
        out the head generation locally on every refresh.
    :param dagfs: the dagfs executable.
    :param refresh_timeout: seconds ``refresh()`` waits for the mount to serve the head.
    :param cache_dir: dagfs's verified object cache for checkouts (default: dagfs's).
    """

    supports_versioning = True

    def __init__(
        self,
        *,
        store_url: str,
        mount: str | None = None,
        dagfs: str = "dagfs",
        refresh_timeout: float = 60.0,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.store_url = store_url
        self.mount = mount
        self.dagfs = dagfs
        self.refresh_timeout = refresh_timeout
        self.cache_dir = cache_dir
        if self.version is not None and not str(self.version).isdigit():
            raise DagfsBundleError(
                f"bundle {self.name}: version {self.version!r} is not a dagfs generation number"
            )

    # Where things are.

    def _version_dir(self, generation: str) -> Path:
        return self.versions_dir / generation

    @property
    def _head_link(self) -> Path:
        return self.base_dir / "head"

    @property
    def path(self) -> Path:
        if self.version is not None:
            return self._version_dir(str(self.version))
        if self.mount:
            return Path(self.mount)
        return self._head_link

    # dagfs.

    def _dagfs(self, *args: str) -> str:
        command = [self.dagfs, "-q", *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise DagfsBundleError(
                f"bundle {self.name}: the dagfs executable {self.dagfs!r} was not found; "
                "install dagfs or set the bundle's `dagfs` kwarg to its path"
            ) from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            # dagfs's own one-line error, not the HDFS client's warnings before it.
            reason = ([line for line in lines if line.startswith("dagfs")] or lines or ["(no output)"])[-1]
            raise DagfsBundleError(f"bundle {self.name}: `{' '.join(command)}` failed: {reason}")
        return done.stdout

    def _checkout(self, generation: str | None, target: Path) -> dict:
        args = ["checkout", "--store", self.store_url, "--json"]
        if generation is not None:
            args += ["--generation", generation]
        if self.cache_dir:
            args += ["--cache-dir", self.cache_dir]
        return json.loads(self._dagfs(*args, str(target)))

    def _head_generation(self) -> str:
        generations = json.loads(self._dagfs("log", "--store", self.store_url, "-n", "1", "--json"))
        if not generations:
            raise DagfsBundleError(f"bundle {self.name}: {self.store_url} has no generations yet; publish one with `dagfs push`")
        return str(generations[0]["generation"])

    # The bundle API.

    def initialize(self) -> None:
        if self.version is not None:
            # A worker: exactly this generation, verified, built beside and renamed into place.
            with self.lock():
                self._checkout(str(self.version), self._version_dir(str(self.version)))
        elif self.mount:
            mount_state(self.mount)
        else:
            self.refresh()
        super().initialize()

    def get_current_version(self):
        if self.version is not None:
            generation, data = str(self.version), None
        elif self.mount:
            state = mount_state(self.mount)
            if state["generation"] is None:
                return None
            generation = str(state["generation"])
            data = {"tree_id": state["tree_id"], "manifest_id": state["manifest_id"], "store": state["store"]}
        else:
            marker = json.loads((self._head_link / ".dagfs-checkout.json").read_text())
            generation = str(marker["generation"])
            data = {"tree_id": marker["tree_id"], "manifest_id": marker["manifest_id"], "store": marker["store"]}
        if BundleVersion is None:
            return generation
        return BundleVersion(version=generation, data=data)

    def refresh(self) -> None:
        if self.version is not None:
            return  # a version never changes
        if self.mount:
            self._wait_for_head()
            return
        with self.lock():
            generation = self._head_generation()
            target = self._version_dir(generation)
            self._checkout(generation, target)
            link = self.base_dir / f".head-{os.getpid()}"
            link.unlink(missing_ok=True)
            link.symlink_to(target)
            os.replace(link, self._head_link)

    def _wait_for_head(self) -> None:
        """Wait until the mount has polled since we started and serves the head it saw."""
        started_ms = time.time() * 1000
        deadline = time.monotonic() + self.refresh_timeout
        while True:
            state = mount_state(self.mount)
            fresh = state["updated_ms"] >= started_ms
            if fresh and state["online"] and state["generation"] == state["head"]:
                return
            if time.monotonic() > deadline:
                raise DagfsBundleError(
                    f"bundle {self.name}: the dagfs mount at {self.mount} still serves generation "
                    f"{state['generation']} (head {state['head']}, online {state['online']}, "
                    f"last error {state['last_error']!r}) after {self.refresh_timeout:.0f} s"
                )
            time.sleep(0.1)
