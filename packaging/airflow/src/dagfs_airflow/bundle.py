"""`DagfsBundle`: a versioned Airflow DAG bundle whose versions are dagfs generations.

A version is ``"<generation>-<first 16 hex digits of its tree id>"``: the generation says
which files, the tree id lets a worker check that it runs exactly the tree the DAG processor
parsed (a store rebuilt from scratch reuses generation numbers, never tree ids).

- DAG processor (no version): ``refresh()`` asks ``dagfs status --json`` which generation
  the host's dagfs mount serves and points ``path`` at that generation's view,
  ``MOUNT/.dagfs/generations/<N>``, until the next refresh. What Airflow parses is therefore
  exactly the version it records, however many generations are published in between.
  ``path`` itself is a symlink that only ``refresh()`` re-points (Airflow keeps the path of
  files queued before a refresh, so the path must not change, only what it shows). The
  status is local: ``refresh()`` never waits for HDFS; while the store is unreachable it
  takes the newest generation the mount holds and logs why. Without a mount, ``refresh()``
  checks out the head (bounded by ``store_timeout``), or keeps the newest checkout it has.
- Worker (a version): the same view when the host has a mount that shows it, else a
  checkout of exactly that generation in a bounded cache (``keep_checkouts`` newest, none
  unused for longer than ``checkout_max_age`` seconds, never one a running task uses).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

try:  # Airflow >= 3.3: structured versions.
    from airflow.dag_processing.bundles.base import BundleVersion
except ImportError:  # older Airflow 3 takes plain strings
    BundleVersion = None

log = logging.getLogger(__name__)

# Checkout directories this process uses, locked shared for the life of the process (a task
# runs in its own process): cleanup never removes a checkout a running task reads.
_held_locks: dict[str, int] = {}


class DagfsBundleError(RuntimeError):
    """A dagfs operation the bundle needs failed; the message says what and how to fix it."""


def make_version(generation: int, tree_id: str) -> str:
    """The version string of a generation."""
    return f"{generation}-{tree_id[:16]}"


def parse_version(version: str) -> tuple[int, str | None]:
    """(generation, tree id prefix) of a version string; plain numbers (versions recorded
    by earlier releases of this bundle) carry no tree id."""
    number, _, tree = str(version).partition("-")
    if not number.isdigit() or (tree and not all(c in "0123456789abcdef" for c in tree)):
        raise DagfsBundleError(f"version {version!r} is not a dagfs version (GENERATION-TREEID)")
    return int(number), tree or None


class DagfsBundle(BaseDagBundle):
    """A DAG bundle whose versions are dagfs generations.

    :param store_url: the dagfs store (``hdfs://...``), as given to ``dagfs mount``.
    :param mount: the dagfs mountpoint on hosts that have one (DAG processor, workers on
        scheduler hosts); hosts without a running mount there use checkouts.
    :param dagfs: the dagfs executable.
    :param cache_dir: dagfs's verified object cache for checkouts (default: one in the
        bundle's storage; never the mount's own cache).
    :param store_timeout: seconds a checkout-mode ``refresh()`` waits for the store.
    :param keep_checkouts: checkouts kept on a host without a mount.
    :param checkout_max_age: seconds after which an unused checkout is removed.
    :param view_url_template: a link per version for the UI, ``{version}`` filled in.
    """

    supports_versioning = True

    def __init__(
        self,
        *,
        store_url: str,
        mount: str | None = None,
        dagfs: str = "dagfs",
        cache_dir: str | None = None,
        store_timeout: float = 5.0,
        keep_checkouts: int = 10,
        checkout_max_age: float = 24 * 3600,
        view_url_template: str | None = None,
        **kwargs,
    ) -> None:
        if "view_url_template" in inspect.signature(BaseDagBundle.__init__).parameters:
            kwargs["view_url_template"] = view_url_template  # Airflow >= 3.1
        super().__init__(**kwargs)
        self.store_url = store_url
        self.mount = os.path.abspath(mount) if mount else None
        self.dagfs = dagfs
        self.store_timeout = store_timeout
        self.keep_checkouts = max(1, int(keep_checkouts))
        self.checkout_max_age = checkout_max_age
        self._view_url_template = view_url_template
        self.cache_dir = cache_dir or str(self.base_dir / "dagfs-cache")
        # The version parsed and the path served: fixed at initialize() for a worker, at each
        # refresh() for the DAG processor.
        self._chosen: tuple[int, str] | None = None
        self._path: Path | None = None
        if self.version is not None:
            parse_version(self.version)

    # Where things are.

    @property
    def _checkouts(self) -> Path:
        return self.base_dir / "dagfs-checkouts"

    def _view(self, generation: int) -> Path:
        return Path(self.mount) / ".dagfs" / "generations" / str(generation)

    @property
    def _link(self) -> Path:
        """The DAG processor's path: a symlink only refresh() re-points."""
        return self.base_dir / f"dagfs-current-{os.getpid()}"

    @property
    def path(self) -> Path:
        if self._path is not None:
            return self._path
        # Before initialize() (Airflow asks early): where it will be.
        if self.version is None:
            return self._link
        return self._checkouts / str(parse_version(self.version)[0])

    # dagfs.

    def _dagfs(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        command = [self.dagfs, "-q", *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise DagfsBundleError(
                f"bundle {self.name}: the dagfs executable {self.dagfs!r} was not found; "
                "install dagfs or set the bundle's `dagfs` kwarg to its path"
            ) from None
        except subprocess.TimeoutExpired:
            raise DagfsBundleError(f"bundle {self.name}: `{' '.join(command)}` took longer than {timeout:.0f} s") from None
        if check and done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            # dagfs's own one-line error, not the HDFS client's warnings before it.
            reason = ([line for line in lines if line.startswith("dagfs")] or lines or ["(no output)"])[-1]
            raise DagfsBundleError(f"bundle {self.name}: `{' '.join(command)}` failed: {reason}")
        return done.stdout

    def _mount_state(self) -> dict | None:
        """The state of the running dagfs mount at `mount` (from `dagfs status --json`,
        which reads local state files only), or None if none runs there."""
        if not self.mount:
            return None
        # Exit code 1 only means some component reports an error: the JSON is complete.
        out = self._dagfs("status", "--json", timeout=30, check=False)
        try:
            status = json.loads(out)
        except ValueError:
            raise DagfsBundleError(f"bundle {self.name}: `dagfs status --json` printed no JSON: {out[:200]!r}") from None
        for state in status.get("mount", []):
            if state.get("mountpoint") == self.mount and state.get("running"):
                return state
        return None

    def _checkout(self, generation: int | None, tree: str | None) -> tuple[int, str, Path]:
        """A verified checkout of `generation` (the head if None) in the checkout cache,
        locked for this process; its tree id must start with `tree`."""
        self._checkouts.mkdir(parents=True, exist_ok=True)
        with self.lock():
            if generation is None:
                generation = self._head_generation()
            target = self._checkouts / str(generation)
            self._hold(generation)
            args = ["checkout", "--store", self.store_url, "--json", "--generation", str(generation)]
            args += ["--cache-dir", self.cache_dir, "--keep-cached", str(self.keep_checkouts)]
            made = json.loads(self._dagfs(*args, str(target)))
            self._clean_checkouts(keep=generation)
        if tree and not made["tree_id"].startswith(tree):
            raise DagfsBundleError(
                f"bundle {self.name}: generation {generation} of {self.store_url} is tree "
                f"{made['tree_id'][:16]}, but this version was parsed from tree {tree}: the store "
                "was rebuilt since; the run cannot get its code"
            )
        return generation, made["tree_id"], target

    def _head_generation(self) -> int:
        out = self._dagfs("log", "--store", self.store_url, "-n", "1", "--json", timeout=self.store_timeout)
        generations = json.loads(out)
        if not generations:
            raise DagfsBundleError(f"bundle {self.name}: {self.store_url} has no generations yet; publish one with `dagfs push`")
        return int(generations[0]["generation"])

    def _hold(self, generation: int) -> None:
        """Locks checkout `generation` shared for the life of this process and marks it
        used now (the cleanup's age)."""
        lock = self._checkouts / f"{generation}.lock"
        if str(lock) not in _held_locks:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            _held_locks[str(lock)] = fd
        os.utime(lock)

    def _release(self, generation: int) -> None:
        fd = _held_locks.pop(str(self._checkouts / f"{generation}.lock"), None)
        if fd is not None:
            os.close(fd)

    def _clean_checkouts(self, keep: int) -> None:
        """Removes checkouts beyond the newest-used `keep_checkouts` or unused for
        `checkout_max_age`, except `keep` and those a process holds; and leftovers of
        checkouts that died half-way (older than an hour)."""
        now = time.time()
        locks = []
        for lock in self._checkouts.glob("*.lock"):
            try:
                locks.append((lock.stat().st_mtime, lock))
            except FileNotFoundError:
                pass
        locks.sort(reverse=True)
        for rank, (used, lock) in enumerate(locks):
            generation = lock.name[: -len(".lock")]
            if generation == str(keep) or (rank < self.keep_checkouts and now - used < self.checkout_max_age):
                continue
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a running task reads it
                continue
            try:
                target = self._checkouts / generation
                if target.exists():
                    doomed = self._checkouts / f".{generation}.removing-{os.getpid()}"
                    os.rename(target, doomed)
                    _make_writable(doomed)
                    shutil.rmtree(doomed)
                lock.unlink()
            finally:
                os.close(fd)
        for leftover in self._checkouts.glob(".*"):
            try:
                if now - leftover.stat().st_mtime > 3600:
                    _make_writable(leftover)
                    shutil.rmtree(leftover)
            except FileNotFoundError:
                pass

    def _choose(self, generation: int, tree_id: str, path: Path) -> None:
        previous = self._chosen
        self._chosen = (generation, tree_id)
        if self.version is not None:
            self._path = path
            return
        # The DAG processor: one symlink per process, re-pointed atomically here only.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        link = self._link
        if previous != self._chosen or not link.is_symlink():
            staged = self.base_dir / f".dagfs-current-{os.getpid()}.new"
            staged.unlink(missing_ok=True)
            staged.symlink_to(path)
            os.replace(staged, link)
        os.utime(link, follow_symlinks=False)
        self._path = link
        if previous and previous[0] != generation:
            self._release(previous[0])
        # Links of processors gone for a day.
        for other in self.base_dir.glob("dagfs-current-*"):
            try:
                if time.time() - other.lstat().st_mtime > 24 * 3600:
                    other.unlink()
            except FileNotFoundError:
                pass

    def _check_serialization_interval(self) -> None:
        """Refuses to parse under a rate limit on serialized DAGs: Airflow writes a parse's
        bundle version to the DAG's row at once, but its tasks (the serialized DAG) at most
        every ``[core] min_serialized_dag_update_interval`` seconds, so a run created in
        between would record the new generation and get the old generation's tasks."""
        from airflow.configuration import conf

        interval = conf.getint("core", "min_serialized_dag_update_interval", fallback=30)
        if interval > 0:
            raise DagfsBundleError(
                f"bundle {self.name}: [core] min_serialized_dag_update_interval is {interval} s, so "
                "Airflow would record a new generation on a DAG before its new tasks, and a run "
                "created meanwhile would get the new version with the old tasks; set it to 0 "
                "(AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL=0) for the DAG processor, "
                "the scheduler and the API server"
            )

    # The bundle API.

    def initialize(self) -> None:
        if self.version is None:
            self._check_serialization_interval()
            self.refresh()
        else:
            generation, tree = parse_version(self.version)
            state = self._mount_state()
            view = next((v for v in (state or {}).get("views", []) if v["generation"] == generation), None)
            if view and (tree is None or view["tree_id"].startswith(tree)):
                self._choose(generation, view["tree_id"], self._view(generation))
            else:
                self._choose(*self._checkout(generation, tree))
        super().initialize()

    def get_current_version(self):
        if self._chosen is None:
            return None
        generation, tree_id = self._chosen
        version = make_version(generation, tree_id)
        if BundleVersion is None:
            return version
        return BundleVersion(version=version, data={"generation": generation, "tree_id": tree_id, "store": self.store_url})

    def refresh(self) -> None:
        if self.version is not None:
            return  # a version never changes
        state = self._mount_state()
        if state is not None:
            if state.get("generation") is None:
                raise DagfsBundleError(f"bundle {self.name}: the dagfs mount at {self.mount} serves no generation yet (empty store)")
            generation, tree_id = int(state["generation"]), state["tree_id"]
            if not self._view(generation).is_dir():
                raise DagfsBundleError(
                    f"bundle {self.name}: the dagfs mount at {self.mount} does not show "
                    f"{self._view(generation)}; upgrade dagfs on this host to a version with "
                    "per-generation views"
                )
            if not state.get("online"):
                log.warning(
                    "bundle %s: the dagfs mount at %s cannot reach the store (%s); serving generation %s, "
                    "the newest it holds",
                    self.name, self.mount, state.get("last_error"), generation,
                )
            self._choose(generation, tree_id, self._view(generation))
            return
        if self.mount and self._chosen is None:
            log.warning("bundle %s: no dagfs mount runs at %s; using checkouts", self.name, self.mount)
        try:
            self._choose(*self._checkout(None, None))
        except DagfsBundleError as e:
            newest = self._newest_checkout()
            if newest is None:
                raise
            log.warning("bundle %s: %s; serving generation %s, the newest checkout here", self.name, e, newest[0])
            self._hold(newest[0])
            self._choose(*newest)

    def _newest_checkout(self) -> tuple[int, str, Path] | None:
        generations = sorted((int(p.name) for p in self._checkouts.glob("*") if p.name.isdigit()), reverse=True)
        for generation in generations:
            marker = self._checkouts / str(generation) / ".dagfs-checkout.json"
            try:
                tree_id = json.loads(marker.read_text())["tree_id"]
            except (OSError, ValueError, KeyError):
                continue
            return generation, tree_id, self._checkouts / str(generation)
        return None

    def view_url_template(self) -> str | None:
        return self._view_url_template

    def view_url(self, version: str | None = None) -> str | None:
        """The link for `version` (Airflow < 3.1 asks this; later ones fill the template)."""
        template = self._view_url_template
        version = version or self.version
        if not template or not version:
            return None
        return template.replace("{version}", version)


def _make_writable(path: Path) -> None:
    """Checkouts carry the manifest's modes (read-only directories too): make them
    removable."""
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o755)
            except OSError:
                pass
    try:
        os.chmod(path, 0o755)
    except OSError:
        pass
