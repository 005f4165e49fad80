"""Thin wrappers over pydegensac (DEGENSAC homography / fundamental matrix).

They never raise on small or degenerate input: fewer matches than the minimal sample (4 for H,
8 for F -- pydegensac's own minimum) or a degenerate result (non-finite or all-zero matrix,
which is how pydegensac reports "no model") give ``(None, all-False mask)``.
Non-finite correspondences are left out of the sample and reported as outliers.

Defaults follow the CAPS / immatch HPatches protocol for H (2 px) except ``max_iters``, which
is 10000 here (pydegensac's default is 50000 for H and 100000 for F); pass ``max_iters`` to
reproduce the reference runs. ``seed`` fixes pydegensac's random generator so that reruns (and
resumed runs) give identical inliers; ``seed=-1`` lets pydegensac seed itself.

Determinism and ``isolation``. pydegensac 0.3.0 samples from a generator of its own, but its F
estimator also draws from the C library's process-global ``rand()`` (``srand(seed)`` at the
start, then ``rand()`` in the degeneracy test, ``rFtH`` / ``dual_sample``: about a thousand
draws per call). Any other thread of the process that calls ``rand()`` while F runs shifts that
sequence and changes the inliers. A Ray process has such threads: gRPC's poller and executor
threads call ``rand()`` (``BdpEstimator::CompletePing``, channel idle filters) a few times a
second, without the GIL, so no lock in Python can keep them out. The homography estimator never
draws from ``rand()`` and is not affected. Hence:

- ``isolation="process"``: pydegensac runs in a private helper process (one per calling process,
  started on first use, fed over a pipe; it runs no other threads), so the result is the one a
  plain single-threaded Python process gives, whatever else runs in the caller.
- ``isolation="none"``: call pydegensac in this process (deterministic only when no other thread
  of the process calls ``rand()``).
- ``isolation="auto"`` (default): ``"process"`` for the fundamental matrix when Ray is initialised
  in this process (driver or worker), ``"none"`` otherwise and always for the homography.

All three give bit-identical models and masks in a process without other ``rand()`` users. The
helper costs one process start (~0.3 s) per calling process and no measurable time per call; an
exception inside it, or its death (retried once), surfaces as ``RuntimeError``.

Conventions: pixels in OpenCV convention; the returned H maps image-0 pixels to image-1 pixels
(x1 ~ H x0); the returned F satisfies x1^T F x0 = 0. Matrices are float64 (3, 3).
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pydegensac

MIN_SAMPLE_HOMOGRAPHY = 4
MIN_SAMPLE_FUNDAMENTAL = 8

#: Accepted values of ``isolation`` (see the module docstring).
ISOLATION_MODES = ("auto", "process", "none")

_SOLVERS = {"homography": pydegensac.findHomography, "fundamental": pydegensac.findFundamentalMatrix}

#: pydegensac keeps its RNG state in process globals. It holds the GIL while it runs (measured), so
#: Python threads cannot interleave today; the lock keeps that so should a build release the GIL.
_INPROCESS_LOCK = threading.Lock()

# The helper's whole program: read (solver, p0, p1, kwargs) requests from stdin, answer each on
# the original stdout; fd 1 is pointed at stderr so anything the C code prints cannot corrupt
# the replies. It imports only numpy and pydegensac and starts no threads that call rand().
_HELPER_SOURCE = r"""
import os, pickle, sys
replies = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
requests = sys.stdin.buffer
import numpy as np
import pydegensac
solvers = {"homography": pydegensac.findHomography, "fundamental": pydegensac.findFundamentalMatrix}
while True:
    try:
        name, p0, p1, kwargs = pickle.load(requests)
    except EOFError:
        break
    try:
        M, mask = solvers[name](p0, p1, **kwargs)
        reply = ("ok", None if M is None else np.asarray(M), np.asarray(mask))
    except Exception as exc:
        reply = ("error", type(exc).__name__, str(exc))
    pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
    replies.flush()
"""


class _Helper:
    """The private pydegensac process of this process: started lazily, restarted if it dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = -1  # pid that started it (a forked child must start its own)

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        # Same imports as here (Ray runtime envs extend sys.path); one thread each for the BLAS.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._proc, self._owner = proc, os.getpid()
        return proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or self._owner != os.getpid():
            return
        try:
            proc.stdin.close()  # EOF: the helper's loop ends
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            proc.kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            proc.kill()
            proc.wait()

    def call(self, name: str, p0: np.ndarray, p1: np.ndarray, kwargs: dict):
        with self._lock:
            for attempt in range(2):
                proc = self._proc if (self._proc is not None and self._owner == os.getpid()) else self._start()
                try:
                    pickle.dump((name, p0, p1, kwargs), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                    proc.stdin.flush()
                    reply = pickle.load(proc.stdout)
                except (EOFError, OSError, pickle.UnpicklingError) as exc:
                    self._kill()  # died (e.g. a crash inside pydegensac): start afresh once
                    if attempt:
                        raise RuntimeError(f"pydegensac helper process died on this input: {exc!r}") from None
                    continue
                if reply[0] == "error":
                    raise RuntimeError(f"pydegensac ({name}) raised {reply[1]}: {reply[2]}")
                return reply[1], reply[2]
        raise AssertionError("unreachable")


_HELPER = _Helper()
atexit.register(_HELPER.close)


def _ray_initialised() -> bool:
    ray = sys.modules.get("ray")
    try:
        return bool(ray is not None and ray.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported ray counts as "not running"
        return False


def _use_helper(name: str, isolation: str) -> bool:
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
    if isolation == "auto":
        # Only F draws from the global rand() that Ray's gRPC threads also use.
        return name == "fundamental" and _ray_initialised()
    return isolation == "process"


def _solve(name: str, p0: np.ndarray, p1: np.ndarray, isolation: str, kwargs: dict):
    if _use_helper(name, isolation):
        return _HELPER.call(name, p0, p1, kwargs)
    with _INPROCESS_LOCK:
        return _SOLVERS[name](p0, p1, **kwargs)


def _prepare(kpts0: np.ndarray, kpts1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2) float64 copies of both point sets and the (N,) mask of finite correspondences."""
    p0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    if len(p0) != len(p1):
        raise ValueError(f"kpts0 and kpts1 differ in length: {len(p0)} vs {len(p1)}")
    finite = np.isfinite(p0).all(axis=1) & np.isfinite(p1).all(axis=1)
    return p0, p1, finite


def _valid_model(M: np.ndarray | None) -> np.ndarray | None:
    """The (3, 3) float64 model, or None when missing, non-finite or all zeros."""
    if M is None:
        return None
    M = np.asarray(M, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(M).all() or not np.any(M):
        return None
    return M


def _run(name: str, kpts0, kpts1, min_sample: int, isolation: str, **kwargs) -> tuple[np.ndarray | None, np.ndarray]:
    """Run a pydegensac solver on the finite correspondences; map the mask back to (N,)."""
    _use_helper(name, isolation)  # validate ``isolation`` even when the input is too small
    p0, p1, finite = _prepare(kpts0, kpts1)
    mask = np.zeros(len(p0), dtype=bool)
    if int(finite.sum()) < min_sample:
        return None, mask
    M, sub_mask = _solve(name, np.ascontiguousarray(p0[finite]), np.ascontiguousarray(p1[finite]), isolation, kwargs)
    M = _valid_model(M)
    if M is None:
        return None, mask
    mask[np.flatnonzero(finite)] = np.asarray(sub_mask, dtype=bool).reshape(-1)
    return M, mask


def find_homography(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    threshold: float = 2.0,
    confidence: float = 0.999,
    max_iters: int = 10000,
    *,
    seed: int = 0,
    isolation: str = "auto",
) -> tuple[np.ndarray | None, np.ndarray]:
    """DEGENSAC homography image 0 -> image 1.

    Args:
        kpts0, kpts1: (N, 2) matched pixels.
        threshold: inlier threshold in pixels (pydegensac ``px_th``, symmetric Sampson-type error).
        confidence: RANSAC confidence.
        max_iters: iteration cap.
        seed: random seed (-1: pydegensac picks one).
        isolation: ``"auto"`` | ``"process"`` | ``"none"`` (module docstring); ``"auto"`` runs H
            in this process, which is deterministic (H never draws from the global ``rand()``).

    Returns:
        (H (3, 3) normalised so that H[2, 2] = 1 when possible, or None; inliers (N,) bool).
    """
    H, mask = _run(
        "homography",
        kpts0,
        kpts1,
        MIN_SAMPLE_HOMOGRAPHY,
        isolation,
        px_th=float(threshold),
        conf=float(confidence),
        max_iters=int(max_iters),
        seed=int(seed),
    )
    if H is not None and abs(H[2, 2]) > 1e-12:
        H = H / H[2, 2]
    return H, mask


def find_fundamental(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    threshold: float = 1.0,
    confidence: float = 0.9999,
    max_iters: int = 10000,
    *,
    seed: int = 0,
    isolation: str = "auto",
) -> tuple[np.ndarray | None, np.ndarray]:
    """DEGENSAC fundamental matrix with x1^T F x0 = 0 (degeneracy check on).

    Args:
        kpts0, kpts1: (N, 2) matched pixels.
        threshold: inlier threshold in pixels (pydegensac ``px_th``, Sampson error).
        confidence: RANSAC confidence.
        max_iters: iteration cap.
        seed: random seed (-1: pydegensac picks one).
        isolation: ``"auto"`` | ``"process"`` | ``"none"`` (module docstring); ``"auto"`` uses the
            helper process when Ray is initialised here, whose gRPC threads call ``rand()``.

    Returns:
        (F (3, 3) or None, inliers (N,) bool).
    """
    return _run(
        "fundamental",
        kpts0,
        kpts1,
        MIN_SAMPLE_FUNDAMENTAL,
        isolation,
        px_th=float(threshold),
        conf=float(confidence),
        max_iters=int(max_iters),
        seed=int(seed),
    )
