"""RANSAC (pydegensac) gives the same inliers for the same seed, in a plain process and in Ray workers.

pydegensac's F estimator draws from the C library's global ``rand()``; gRPC threads in every Ray
process call ``rand()`` too, so in-process F inliers changed between runs of a Ray job. The
``_NativeRandUser`` below plays those threads' part at a much higher rate: a POSIX timer whose
SIGEV_THREAD notification function *is* ``rand()``, so native threads draw from the global state
every few hundred microseconds without the GIL (a Python thread could not: pydegensac holds the
GIL while it runs). The reference is computed in a fresh Python process with nothing else in it.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from matchmill.geometry.robust import ISOLATION_MODES, find_fundamental, find_homography

from tests.helpers.paths import REPO

N_PAIRS = 40
SEED = 7


def synthetic_fundamental_pair(i: int, n: int = 300, outliers: float = 0.5, noise: float = 1.0):
    """Two views of a random 3D point cloud, ``outliers`` of the matches replaced by random pixels."""
    rng = np.random.default_rng(1000 + i)
    X = np.c_[rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), rng.uniform(4, 8, n)]
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    a = rng.uniform(-0.2, 0.2, 3)
    angle = np.linalg.norm(a)
    k = a / angle
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = np.eye(3) + np.sin(angle) * Kx + (1 - np.cos(angle)) * Kx @ Kx
    t = np.array([1.0, rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)])
    x0 = X @ K.T
    x1 = (X @ R.T + t) @ K.T
    x0, x1 = x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]
    x0 = x0 + rng.normal(0, noise, x0.shape)
    x1 = x1 + rng.normal(0, noise, x1.shape)
    bad = rng.random(n) < outliers
    x1[bad] = rng.uniform([0, 0], [640, 480], (int(bad.sum()), 2))
    return x0, x1


def synthetic_homography_pair(i: int, n: int = 300, outliers: float = 0.5, noise: float = 1.0):
    rng = np.random.default_rng(5000 + i)
    x0 = rng.uniform([0, 0], [640, 480], (n, 2))
    H = np.eye(3) + rng.normal(0, [[0.05, 0.05, 10], [0.05, 0.05, 10], [1e-4, 1e-4, 0]])
    p = np.c_[x0, np.ones(n)] @ H.T
    x1 = p[:, :2] / p[:, 2:] + rng.normal(0, noise, (n, 2))
    bad = rng.random(n) < outliers
    x1[bad] = rng.uniform([0, 0], [640, 480], (int(bad.sum()), 2))
    return x0, x1


def estimate_all(isolation: str = "auto", reverse: bool = False) -> dict[str, list[list[int]]]:
    """Inlier indices of F and H on every synthetic pair, in pair order (JSON-friendly)."""
    out: dict[str, list] = {"F": [None] * N_PAIRS, "H": [None] * N_PAIRS}
    for i in reversed(range(N_PAIRS)) if reverse else range(N_PAIRS):
        _, m = find_fundamental(*synthetic_fundamental_pair(i), seed=SEED, isolation=isolation)
        out["F"][i] = np.flatnonzero(m).tolist()
        _, m = find_homography(*synthetic_homography_pair(i), seed=SEED, isolation=isolation)
        out["H"][i] = np.flatnonzero(m).tolist()
    return out


class _NativeRandUser:
    """While active, native threads (no GIL) call libc ``rand()`` every ``period_us``."""

    SIGEV_THREAD = 2
    CLOCK_MONOTONIC = 1

    def __init__(self, period_us: int = 500):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.period_ns = int(period_us) * 1000
        self.timer = ctypes.c_void_p()

    def __enter__(self):
        # The ctypes types are built here, not at module level: Ray pickles this module by value.
        class SigEvent(ctypes.Structure):  # struct sigevent, 64-bit glibc layout (64 bytes)
            _fields_ = [
                ("sigev_value", ctypes.c_void_p),
                ("sigev_signo", ctypes.c_int),
                ("sigev_notify", ctypes.c_int),
                ("sigev_notify_function", ctypes.c_void_p),
                ("sigev_notify_attributes", ctypes.c_void_p),
                ("_pad", ctypes.c_byte * 32),
            ]

        class TimeSpec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class ITimerSpec(ctypes.Structure):
            _fields_ = [("it_interval", TimeSpec), ("it_value", TimeSpec)]

        event = SigEvent()
        event.sigev_notify = self.SIGEV_THREAD
        event.sigev_notify_function = ctypes.cast(self.libc.rand, ctypes.c_void_p).value
        if self.libc.timer_create(self.CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(self.timer)):
            raise OSError(ctypes.get_errno(), "timer_create failed")
        period = TimeSpec(0, self.period_ns)
        if self.libc.timer_settime(self.timer, 0, ctypes.byref(ITimerSpec(period, period)), None):
            raise OSError(ctypes.get_errno(), "timer_settime failed")
        return self

    def __exit__(self, *exc):
        self.libc.timer_delete(self.timer)


def rand_calls_by_others(seconds: float = 0.3, seed: int = 12345) -> int:
    """How many times other threads called ``rand()`` during ``seconds`` (-1: more than we can tell)."""
    libc = ctypes.CDLL(None)
    libc.srand(seed)
    sequence = [libc.rand() for _ in range(100_000)]
    libc.srand(seed)
    time.sleep(seconds)
    a, b = libc.rand(), libc.rand()
    return next((i for i in range(len(sequence) - 1) if sequence[i] == a and sequence[i + 1] == b), -1)


@pytest.fixture(scope="module")
def plain_reference() -> dict:
    """Inliers from a fresh Python process with no other threads, twice, the second in reverse order."""
    code = (
        "import json, sys\n"
        "import tests.geometry.test_robust_determinism as t\n"
        "json.dump({'first': t.estimate_all('none'), 'second': t.estimate_all('none', reverse=True)}, sys.stdout)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_plain_process_repeats_exactly_in_any_order(plain_reference):
    assert plain_reference["first"] == plain_reference["second"]
    counts = [len(m) for m in plain_reference["first"]["F"]]
    assert min(counts) > 50  # the pairs are real RANSAC problems, not degenerate ones


def test_in_process_repeated_calls_are_identical_and_match_the_plain_process(plain_reference):
    first, second = estimate_all(), estimate_all()
    assert first == second
    assert first == plain_reference["first"]
    assert estimate_all("process") == plain_reference["first"]


def test_helper_process_is_immune_to_other_rand_users(plain_reference):
    with _NativeRandUser(period_us=500):
        assert rand_calls_by_others() > 100  # the simulated gRPC threads really draw from rand()
        isolated = estimate_all("process")
        homographies = estimate_all("none")["H"]
    assert isolated == plain_reference["first"]
    assert homographies == plain_reference["first"]["H"]  # H never draws from rand()


def test_isolation_values_are_checked():
    assert ISOLATION_MODES == ("auto", "process", "none")
    with pytest.raises(ValueError, match="isolation"):
        find_fundamental(np.zeros((3, 2)), np.zeros((3, 2)), isolation="thread")
    with pytest.raises(ValueError, match="isolation"):
        find_homography(np.zeros((3, 2)), np.zeros((3, 2)), isolation="")


def test_degenerate_input_keeps_its_contract_in_the_helper():
    pts = np.random.default_rng(0).uniform(0, 100, (20, 2))
    for iso in ISOLATION_MODES:
        F, mask = find_fundamental(pts[:5], pts[:5], isolation=iso)
        assert F is None and mask.shape == (5,) and not mask.any()
    H, mask = find_homography(pts, pts.copy(), isolation="process")
    assert H.shape == (3, 3) and H.dtype == np.float64 and mask.dtype == bool and mask.all()


def _in_ray_worker() -> dict:
    """Runs inside a Ray worker: the default ``isolation`` with rand() hammered by native threads."""
    with _NativeRandUser(period_us=500):
        hammered = rand_calls_by_others()
        result = estimate_all()
    return {"result": result, "hammered": hammered}


@pytest.mark.ray
def test_ray_workers_give_exactly_the_plain_process_inliers(ray_local, plain_reference):
    ray = ray_local
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not on the workers' path

    @ray.remote(num_cpus=0.5)
    class Verifier:
        def run(self):
            return _in_ray_worker()

    task = ray.remote(num_cpus=0.5)(_in_ray_worker)
    actor = Verifier.remote()
    outputs = ray.get([actor.run.remote(), task.remote()], timeout=120)
    ray.kill(actor)
    reference = plain_reference["first"]
    for out in outputs:
        assert out["hammered"] > 100
        differ = [i for i in range(N_PAIRS) if out["result"]["F"][i] != reference["F"][i]]
        assert not differ, f"F inliers differ from the plain process on pairs {differ}"
        assert out["result"]["H"] == reference["H"]
