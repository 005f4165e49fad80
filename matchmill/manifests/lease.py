"""One writer per run: a lease file ``<run>/_lease.json`` on the run's own storage.

``matchmill run`` / ``mine`` / ``gc`` hold it while they write; a second writer of the same run
is refused with one line naming the holder (pid, host, user, when it started, its last heartbeat).

The file holds an owner ``token`` (a fresh uuid per acquisition), ``host``, ``pid``, ``user``,
``started_at``, ``heartbeat_at`` (Unix seconds) and the ``command``. It lives at the run's root,
beside the stage folders: nothing that lists stages or parts reads it (they list ``*.parquet``
inside a stage folder), and gc removes only ``.tmp-*`` files.

- **Acquire**: free when there is no lease, when the holder's heartbeat is older than the stale
  time, or when the holder ran on this host and its pid is gone (taken over at once). The stale
  time is 120 s unless the environment variable ``MATCHMILL_LEASE_STALE_S`` says otherwise (set
  it on every machine that writes the run). A new lease is written atomically; on a local file
  system with an exclusive create (a hard link that fails when the file exists), elsewhere (object
  stores have no O_EXCL) written, then read back after a short settle time: whoever reads its own
  token back holds it, the others are refused.
- **Heartbeat**: a daemon thread rewrites ``heartbeat_at`` every stale/4 seconds, after checking
  that the token is still ours. When it is not (another process took the lease over, or the file
  was removed), the lease is *lost*: logged loudly, and :func:`ensure_held` (called by the runner
  before it clears or commits a stage) raises :class:`LeaseLost`, so a run that lost its lease
  stops before it commits anything.
- **Release**: removes the file, only while the token is still ours.

Clocks: staleness compares the holder's ``heartbeat_at`` with this machine's clock, so machines
sharing a run should keep their clocks in sync (NTP) well within the stale time.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from datetime import datetime

from .storage import StorageError, is_local, join, remove_tree, url_to_fs, write_bytes_atomic

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
#: Seconds without a heartbeat after which a lease is taken over (``MATCHMILL_LEASE_STALE_S``).
DEFAULT_STALE_S = 120.0
STALE_ENV = "MATCHMILL_LEASE_STALE_S"
#: Seconds between writing a lease on an object store and reading it back to confirm it is ours.
SETTLE_S = 0.2

#: Leases this process holds, by run URL (what :func:`ensure_held` checks).
_HELD: dict[str, "Lease"] = {}
_HELD_LOCK = threading.Lock()


class LeaseError(StorageError):
    """The run is in use by another writer (a :class:`StorageError`: one line, exit code 2)."""


class LeaseLost(StorageError):
    """This process's lease was taken over (or removed) while it ran: it must not commit."""


def lease_url(run_url: str) -> str:
    return join(run_url, LEASE_FILE)


def stale_seconds() -> float:
    """The stale time: ``MATCHMILL_LEASE_STALE_S`` when set, else :data:`DEFAULT_STALE_S`."""
    raw = os.environ.get(STALE_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_STALE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise StorageError(f"{STALE_ENV}={raw!r}: expected a number of seconds > 0")
    return value


def _key(run_url: str) -> str:
    return run_url.rstrip("/")


def _host() -> str:
    return socket.gethostname()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers): the uid will do
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # someone else's process, or a pid we cannot judge: treat it as alive
    return True


def read_lease(run_url: str) -> dict | None:
    """The lease record of a run (``{}`` for a file that is not a lease), or None when free."""
    url = lease_url(run_url)
    fs, path = url_to_fs(url)
    fs.invalidate_cache(path)  # another process may have written it since our last listing
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) and record.get("token") else {}


def _when(ts) -> str:
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _age(record: dict, now: float | None = None) -> float:
    try:
        return max(0.0, (time.time() if now is None else now) - float(record.get("heartbeat_at")))
    except (TypeError, ValueError):
        return float("inf")


def takeover_reason(record: dict, stale_s: float, now: float | None = None) -> str | None:
    """Why a lease held by ``record`` may be taken over now, or None while its holder counts as alive."""
    if not record:
        return "the lease file is unreadable"
    age = _age(record, now)
    if age > stale_s:
        return f"no heartbeat for {age:.0f} s"
    if record.get("host") == _host() and not _pid_alive(record.get("pid")):
        return f"pid {record.get('pid')} on this host is gone"
    return None


def describe_holder(record: dict, now: float | None = None) -> str:
    """``pid 1234 on host h (user u, started ..., last heartbeat 3 s ago)``."""
    command = str(record.get("command") or "")
    command = f", `{command[:77]}...`" if len(command) > 80 else f", `{command}`" if command else ""
    return (f"pid {record.get('pid')} on host {record.get('host')} (user {record.get('user')}{command}, "
            f"started {_when(record.get('started_at'))}, last heartbeat {_age(record, now):.0f} s ago)")


def lease_status(run_url: str) -> str | None:
    """One line for ``matchmill status`` when the run holds a lease, else None."""
    record = read_lease(run_url)
    if record is None:
        return None
    if not record:
        return f"lease: {lease_url(run_url)} is unreadable (the next run takes it over)"
    line = (f"locked by pid {record.get('pid')} on host {record.get('host')} "
            f"(user {record.get('user')}, heartbeat {_age(record):.0f} s ago)")
    why = takeover_reason(record, stale_seconds())
    return line + (f"; stale: {why}, the next run takes it over" if why else "")


class Lease:
    """A lease this process holds on one run (see the module docstring)."""

    def __init__(self, run_url: str, record: dict, stale_s: float):
        self.run_url = run_url
        self.url = lease_url(run_url)
        self.record = record
        self.stale_s = stale_s
        self.lost: str | None = None  # why, once the lease was found taken over or removed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.record["token"]

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self, fresh: bool = False) -> None:
        """Raise :class:`LeaseLost` when the lease is no longer ours (``fresh``: read it now)."""
        if fresh and self.lost is None:
            self._confirm(read_lease(self.run_url))
        if self.lost is not None:
            raise LeaseLost(f"run {self.run_url}: this process's lease {self.lost}; it stopped before committing "
                            "so that the two writers' results do not mix (rerun the same command to resume)")

    def _confirm(self, record: dict | None) -> bool:
        if record is not None and record.get("token") == self.token:
            return True
        if self.lost is None:
            self.lost = (f"was taken over by {describe_holder(record)}" if record
                         else f"file {self.url} was removed while this process held it")
            log.error("matchmill: run %s: lease %s; this run stops before its next commit", self.run_url, self.lost)
        return False

    def beat(self) -> bool:
        """Refresh ``heartbeat_at`` once, after checking the token is still ours; False once lost."""
        if self.lost is not None:
            return False
        try:
            if not self._confirm(read_lease(self.run_url)):
                return False
            record = dict(self.record, heartbeat_at=time.time())
            write_bytes_atomic(self.url, _dump(record))
            self.record = record
        except LeaseLost:
            raise
        except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again at the next beat
            log.warning("run %s: lease heartbeat failed (%s: %s); retrying", self.run_url, type(exc).__name__, exc)
        return True

    def start_heartbeat(self, interval: float | None = None) -> None:
        interval = self.stale_s / 4 if interval is None else interval

        def loop() -> None:
            while not self._stop.wait(interval):
                if not self.beat():
                    return

        self._thread = threading.Thread(target=loop, name="matchmill-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file, only while it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with _HELD_LOCK:
            if _HELD.get(_key(self.run_url)) is self:
                del _HELD[_key(self.run_url)]
        if self.lost is not None:
            return
        try:
            if self._confirm(read_lease(self.run_url)):
                remove_tree(self.url)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own outcome behind this
            log.warning("run %s: could not release the lease %s (%s: %s); the next run takes it over after %g s",
                        self.run_url, self.url, type(exc).__name__, exc, self.stale_s)


def _dump(record: dict) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True).encode()


def _create_exclusive(url: str, data: bytes) -> bool:
    """Local file systems: publish ``data`` at ``url`` only if nothing is there (False if taken)."""
    fs, path = url_to_fs(url)
    parent = posixpath.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)  # atomic, and fails when the file exists: an exclusive create of whole content
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def acquire_lease(run_url: str, command: str | None = None, stale_s: float | None = None,
                  heartbeat: bool = True, settle_s: float = SETTLE_S) -> Lease:
    """Take the run's lease or raise :class:`LeaseError` naming its holder (see the module docstring).

    ``command``: what the holder runs, for the refusal message of others (default: this
    process's command line). ``heartbeat``: start the refresh thread."""
    stale_s = stale_seconds() if stale_s is None else float(stale_s)
    url = lease_url(run_url)
    now = time.time()
    record = {"token": uuid.uuid4().hex, "host": _host(), "pid": os.getpid(), "user": _user(),
              "started_at": now, "heartbeat_at": now,
              "command": command if command is not None else " ".join(["matchmill", *sys.argv[1:]])}
    fs, _ = url_to_fs(url)
    lease: Lease | None = None
    try:
        for _attempt in range(5):
            held = read_lease(run_url)
            if held is not None:
                why = takeover_reason(held, stale_s)
                if why is None:
                    raise LeaseError(_refusal(run_url, held, stale_s))
                log.warning("run %s: taking over the lease of %s: %s", run_url,
                            describe_holder(held) if held else "an unknown holder", why)
            record["heartbeat_at"] = time.time()
            if held is None and is_local(fs):
                if not _create_exclusive(url, _dump(record)):
                    continue  # another writer created it between our read and our create: judge theirs
            else:
                write_bytes_atomic(url, _dump(record))
                time.sleep(settle_s)  # let a racing writer's PUT land, then see whose token stayed
            now_held = read_lease(run_url)
            if now_held is None or now_held.get("token") != record["token"]:
                if now_held and takeover_reason(now_held, stale_s) is None:
                    raise LeaseError(_refusal(run_url, now_held, stale_s))
                continue
            break
        else:
            raise LeaseError(f"run {run_url}: could not take the lease {url} (other writers keep replacing it)")
        lease = Lease(run_url, record, stale_s)
        with _HELD_LOCK:
            _HELD[_key(run_url)] = lease
        if heartbeat:
            lease.start_heartbeat()  # starting a thread takes milliseconds on a loaded machine: still guarded
    except BaseException:
        # an interrupt (Ctrl-C, SIGTERM) after our write and before the caller holds the lease would
        # leave our file behind with nobody to release it: remove it while it is still ours
        (lease or Lease(run_url, record, stale_s)).release()  # also stops its heartbeat, unregisters it
        raise
    return lease


def held_lease(run_url: str) -> Lease | None:
    """The lease this process holds on ``run_url`` (None if none): lets a caller interrupted between
    :func:`acquire_lease` returning and keeping its result release it all the same."""
    with _HELD_LOCK:
        return _HELD.get(_key(run_url))


def _refusal(run_url: str, record: dict, stale_s: float) -> str:
    return (f"run {run_url} is in use by {describe_holder(record)}; wait for it, or remove {lease_url(run_url)} "
            f"if that process is gone (taken over automatically after {stale_s:g} s without heartbeat)")


def ensure_held(run_url: str, fresh: bool = True) -> None:
    """Raise :class:`LeaseLost` when this process took the run's lease and has lost it since
    (``fresh``: read the lease file now, not only the heartbeat's last finding). A no-op for a
    run this process holds no lease on (stage code driven directly, as the tests do)."""
    lease = _HELD.get(_key(run_url))
    if lease is not None:
        lease.check(fresh=fresh)
