"""Session fixtures that run the project's real test clusters (scripts/slurm_cluster.sh, scripts/ray_cluster.sh).

Use them from a test file with

    from cluster_fixtures import slurm_cluster, ray_cluster  # noqa: F401

`slurm_cluster` yields a `SlurmCluster` (config in SLURM_CONF for the whole session, a fresh submitit folder
per call of `.submitit_folder()`); `ray_cluster` yields the address of a local Ray head for
`ray.init(address=...)` (`ray_head`: the same head with its folder). Both stop their cluster at the end of the session, also when tests failed.
Functions submitted to Slurm are pickled by reference: put them in an importable module (tests/ and the
repository root are on the jobs' PYTHONPATH).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SLURM_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
RAY_SCRIPT = REPO / "scripts" / "ray_cluster.sh"
SLURM_BINARIES = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
                  "sacctmgr", "sacct", "sbatch")
SLURM_PACKAGES = "munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
START_TIMEOUT_S = 420  # the script retries a failed start once; each attempt waits at most ~60 s per daemon


def slurm_prerequisites_problem(path: str | None = None) -> str | None:
    """Why the Slurm cluster cannot run here (not root, packages missing), or None."""
    search = (path if path is not None else os.environ.get("PATH", "")) + ":/usr/sbin:/sbin"
    missing = [b for b in SLURM_BINARIES if shutil.which(b, path=search) is None]
    if missing:
        return (f"the Slurm tests need the Debian packages {SLURM_PACKAGES} (missing: {', '.join(missing)}); "
                f"install them as root with: bash scripts/install_system_deps.sh")
    if os.geteuid() != 0:
        return "the Slurm tests need root: the single-node cluster runs slurmd, munged and MariaDB as their users"
    return None


def _jobs_python_path() -> str:
    """PYTHONPATH for jobs and Ray workers: tests/ (job functions, pickled by reference) and the repository."""
    return os.pathsep.join(p for p in (str(TESTS), str(REPO), os.environ.get("PYTHONPATH")) if p)


def _run_script(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def _free_port_block(size: int, low: int = 20000, high: int = 30000) -> int:
    """First port of `size` consecutive ports nobody listens on (checked, not reserved)."""
    for base in range(low + (os.getpid() * 37) % (high - low - size), high - size, size):
        ports = range(base, base + size)
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError(f"no {size} consecutive free ports between {low} and {high}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class SlurmCluster:
    dir: Path
    env: dict[str, str]          # what the session's os.environ got: SLURM_CONF, PYTHONPATH
    partition: str = "debug"
    _counter: itertools.count = field(default_factory=itertools.count, repr=False)
    _saved_environ: dict = field(default_factory=dict, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    def submitit_folder(self, name: str = "submitit") -> Path:
        """A fresh, empty folder for one submitit executor (never shared: submitit reads job state from it)."""
        folder = self.dir / "submitit" / f"{name}-{next(self._counter)}"
        folder.mkdir(parents=True)
        return folder

    def executor(self, name: str = "submitit", **params):
        """A submitit AutoExecutor on this cluster with a fresh folder; `params` override the small defaults."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.submitit_folder(name), cluster="slurm")
        defaults = dict(slurm_partition=self.partition, cpus_per_task=1, mem_gb=1, timeout_min=5)
        executor.update_parameters(**{**defaults, **params})
        return executor

    def sacct_state(self, job_id: str) -> str:
        """The job's state as accounting records it ('' while slurmdbd has no row yet)."""
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)],
                             capture_output=True, text=True, check=True, env={**os.environ, **self.env}).stdout
        return out.strip().splitlines()[0].split()[0] if out.strip() else ""

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs scripts/slurm_cluster.sh ARGS --dir <this cluster's dir>."""
        return _run_script([SLURM_SCRIPT, *args, "--dir", self.dir], timeout)


class _SharedCluster:
    """One cluster per pytest process, however many test modules import the fixture.

    `from cluster_fixtures import slurm_cluster` gives every importing module its own copy of the fixture,
    and a session fixture runs once per copy: without this, each module would start its own cluster. The
    cluster starts with the first user and stops when the last copy is finalised (end of session).
    """

    def __init__(self, start, stop):
        self._start, self._stop = start, stop
        self._users = 0
        self._value = None
        self._failure: str | None = None

    def __enter__(self):
        if self._failure:
            pytest.fail(self._failure, pytrace=False)
        if self._users == 0:
            try:
                self._value = self._start()
            except Exception as error:  # noqa: BLE001 - any start failure fails every user the same way
                self._failure = str(error)
            if self._failure:
                pytest.fail(self._failure, pytrace=False)
        self._users += 1
        return self._value

    def __exit__(self, *exc):
        self._users -= 1
        if self._users == 0:
            value, self._value = self._value, None
            self._stop(value)
        return False


def _start_slurm() -> SlurmCluster:
    problem = slurm_prerequisites_problem()
    if problem:
        raise RuntimeError(problem)
    # Under /tmp, not pytest's tmp_path: munge and mysql must be able to enter it (pytest's is mode 700).
    cluster_dir = Path(tempfile.mkdtemp(prefix="wsss-slurm-", dir="/tmp"))
    for _ in range(3):  # a free port may be taken between our check and the daemon's bind
        port_base = _free_port_block(4)
        start = _run_script([SLURM_SCRIPT, "start", "--dir", cluster_dir, "--port-base", port_base],
                            START_TIMEOUT_S)
        if "is in use" not in start.stderr:
            break
    if start.returncode != 0:
        _run_script([SLURM_SCRIPT, "stop", "--dir", cluster_dir], 180)
        raise RuntimeError(f"scripts/slurm_cluster.sh start failed (logs in {cluster_dir}/log):\n"
                           f"{start.stdout}\n{start.stderr}")
    env = {"SLURM_CONF": str(cluster_dir / "slurm.conf"), "PYTHONPATH": _jobs_python_path()}
    cluster = SlurmCluster(dir=cluster_dir, env=env)
    cluster._saved_environ = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    return cluster


def _stop_slurm(cluster: SlurmCluster) -> None:
    for key, value in cluster._saved_environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stop = _run_script([SLURM_SCRIPT, "stop", "--dir", cluster.dir], 180)
    if stop.returncode == 0 and not os.environ.get("WSSS_KEEP_CLUSTER_DIRS"):
        shutil.rmtree(cluster.dir, ignore_errors=True)


@dataclass(frozen=True)
class RayHead:
    address: str  # '127.0.0.1:PORT', for ray.init(address=...)
    dir: Path     # Ray's temp dir: logs in dir/session_latest/logs


def _start_ray() -> RayHead:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Short path: Ray puts unix sockets under its temp dir (limit ~107 characters).
    ray_dir = Path(tempfile.mkdtemp(prefix="wsss-ray-", dir="/tmp"))
    # Workers inherit the head's environment, not the driver's sys.path: they import tests/ modules through it.
    env = {**os.environ, "PYTHONPATH": _jobs_python_path()}
    for _ in range(3):  # a free port may be taken between our check and the head's bind
        port = _free_port_block(8)
        start = _run_script([RAY_SCRIPT, "start", "--dir", ray_dir, "--port", port, "--num-cpus", 2], 300, env=env)
        if "is in use" not in start.stderr:
            break
    if start.returncode != 0:
        _run_script([RAY_SCRIPT, "stop", "--dir", ray_dir], 120)
        raise RuntimeError(f"scripts/ray_cluster.sh start failed:\n{start.stdout}\n{start.stderr}")
    return RayHead(address=f"127.0.0.1:{port}", dir=ray_dir)


def _stop_ray(head: RayHead) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    stop = _run_script([RAY_SCRIPT, "stop", "--dir", head.dir], 120)
    if stop.returncode == 0 and not os.environ.get("WSSS_KEEP_CLUSTER_DIRS"):
        shutil.rmtree(head.dir, ignore_errors=True)


_SLURM = _SharedCluster(_start_slurm, _stop_slurm)
_RAY = _SharedCluster(_start_ray, _stop_ray)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's single-node Slurm cluster (a `SlurmCluster`); SLURM_CONF points at it meanwhile."""
    with _SLURM as cluster:
        yield cluster


@pytest.fixture(scope="session")
def ray_cluster():
    """Address ('127.0.0.1:PORT') of the session's local Ray head (2 CPUs), for ray.init(address=...)."""
    with _RAY as head:
        yield head.address


@pytest.fixture(scope="session")
def ray_head():
    """The same head as `ray_cluster`, as a `RayHead` (address and folder)."""
    with _RAY as head:
        yield head
