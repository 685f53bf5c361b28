"""A private single-node SLURM cluster for tests and benchmarks: munged, slurmctld and slurmd
started from a temporary folder, by PID, and stopped by PID.

Use the session fixture ``slurm_cluster`` (registered in conftest.py), or in a script::

    with SlurmCluster(tmp_dir) as cluster:
        job = cluster.sbatch(script_path, "--array=0-1")
        cluster.wait_job(job)

The settings are those FACTS.md lists as working here (Debian bookworm, slurm 22.05, as root).
Ports are picked free at start, and every path (state, spool, sockets, pid files) lives in the
cluster's folder, so two test sessions on one machine do not share a cluster.

Without the SLURM binaries (or root) the fixture skips its tests, except under CI (``CI=true``,
or ``NEWSDL_REQUIRE_SLURM=1``, which .ci/run sets after installing them), where it fails them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from newsdl.hpc.scheduler import parse_record

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
# Job states after which a job never runs again (REQUEUED and PREEMPTED go back to PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT"}


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None
            and not Path("/usr/sbin", name).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512  # leave the OS some room
    return 2048


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    """One node (this machine, as ``node``) in one partition ``debug``, ``cpus`` CPUs.

    Attributes: ``root`` (its folder), ``conf`` (slurm.conf), ``env`` (os.environ plus
    SLURM_CONF: pass it to every subprocess that calls a SLURM command), ``node``, ``cpus``,
    ``partition``, ``logs`` (the daemons' log files, for failure messages).
    """

    def __init__(self, root: Path, cpus: int | None = None, cred_expire: int = 5):
        self.root = Path(root)
        self.cred_expire = cred_expire
        self.cpus = cpus or os.cpu_count() or 2
        self.node = socket.gethostname().split(".")[0]
        self.partition = "debug"
        self.conf = self.root / "etc" / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for name in list(self.env):  # a job's own SLURM_* variables would confuse the commands run here
            if name.startswith("SLURM_") and name != "SLURM_CONF":
                del self.env[name]
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self.logs = {name: self.root / "log" / f"{name}.log" for name in ("munged", "slurmctld", "slurmd")}

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise SlurmError("the test cluster runs slurmd as root (it starts jobs as their user); run as root")
        missing = missing_binaries()
        if missing:
            raise SlurmError(f"SLURM binaries missing: {', '.join(missing)}")
        for sub in ("etc", "log", "state", "spool", "run", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge = self.root / "munge"
        os.chmod(munge, 0o711)  # munged refuses a socket folder that others cannot traverse (700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        socket_path = munge / "munge.socket"
        self._spawn("munged", [_which("munged"), "-F", "--force", f"--socket={socket_path}",
                               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.logs['munged']}", f"--seed-file={munge / 'munged.seed'}"])
        self._wait_for(lambda: socket_path.exists(), timeout, "munged's socket")
        self.conf.write_text(self._slurm_conf(socket_path))
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: self._ok(["scontrol", "ping"]) and "UP" in self._out(["scontrol", "ping"]),
                       timeout, "slurmctld")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_for(lambda: self._out(["sinfo", "-h", "-N", "-o", "%T"]).strip() in ("idle", "mixed"),
                       timeout, "the node to be idle")

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, then stop the daemons by PID (slurmd, slurmctld, munged)."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self._procs):
            subprocess.run(["scancel", "--full", f"--partition={self.partition}"], env=self.env,
                           capture_output=True, timeout=30)
            self._wait_for(lambda: not self._out(["squeue", "-h", "-o", "%i"]).strip(), timeout, None)
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        log.close()
        self._procs.append((name, proc))

    def _wait_for(self, ready, timeout: float, what: str | None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self._procs if p.poll() is not None]
            if dead and what is not None:
                raise SlurmError(f"{dead[0]} exited while waiting for {what}: {self.tail(dead[0])}")
            if ready():
                return True
            time.sleep(0.2)
        if what is not None:
            raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}: "
                             + " | ".join(self.tail(n) for n in ("slurmctld", "slurmd")))
        return False

    def tail(self, name: str, lines: int = 8) -> str:
        text = ""
        for path in (self.logs.get(name), self.root / "log" / f"{name}.stdout"):
            if path and path.is_file():
                text += path.read_text(errors="replace")
        return f"{name}: " + " / ".join(text.strip().splitlines()[-lines:])

    def _slurm_conf(self, munge_socket: Path) -> str:
        r = self.root
        return "\n".join([
            f"ClusterName=newsdltest{os.getpid()}",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire is also how long a requeued job waits before it may start again (120 s by
            # default): short, so that the preemption test does not idle for two minutes.
            f"AuthInfo=socket={munge_socket},cred_expire={self.cred_expire}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs['slurmctld']}",
            f"SlurmdLogFile={self.logs['slurmd']}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            # Without batch_sched_delay=0, jobs start about 3 s apart (FACTS.md). A requeued job
            # becomes eligible after cred_expire but waits for a periodic pass (60 s main, 30 s
            # backfill by default): 1 s passes are nothing on one node.
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1",
            "JobRequeue=1",
            # Finished jobs stay visible to `scontrol show job` for 10 minutes: the tests and
            # `newsdl status` read their final state from there (no accounting database).
            "MinJobAge=600",
            "KillWait=10",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # ------------------------------------------------------------------ commands

    def run(self, argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command (a SLURM client, or `newsdl`) against this cluster."""
        proc = subprocess.run([str(a) for a in argv], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(map(str, argv))}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def _ok(self, argv: list[str]) -> bool:
        try:
            return self.run(argv, check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _out(self, argv: list[str]) -> str:
        try:
            return self.run(argv, check=False, timeout=10).stdout
        except subprocess.TimeoutExpired:
            return ""

    def sbatch(self, script: str | Path, *args: str) -> str:
        """Submit a batch script (a path, or the script's text); return the job id."""
        if not Path(str(script)).is_file():
            path = self.root / f"job-{time.monotonic_ns()}.sh"
            path.write_text(str(script))
            script = path
        out = self.run(["sbatch", "--parsable", *args, str(script)]).stdout.strip()
        return out.split(";")[0]

    def job_records(self, job_id: str) -> list[dict]:
        """`scontrol show job -o`, one dict per job (array tasks each); [] if unknown."""
        proc = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if proc.returncode != 0:
            return []
        return [parse_record(line) for line in proc.stdout.splitlines() if line.strip()]

    def job_state(self, job_id: str) -> str | None:
        """The job's state (an array: its tasks' states joined by commas), None if unknown."""
        records = self.job_records(job_id)
        return ",".join(sorted({r.get("JobState", "?") for r in records})) if records else None

    def wait_job(self, job_id: str, timeout: float = 300, poll: float = 0.5) -> list[dict]:
        """Wait until every record of the job (each array task) is in a final state; return them."""
        deadline = time.monotonic() + timeout
        records: list[dict] = []
        while time.monotonic() < deadline:
            records = self.job_records(job_id)
            if records and all(r.get("JobState") in FINAL_STATES for r in records):
                return records
            time.sleep(poll)
        raise SlurmError(f"job {job_id} not finished after {timeout:.0f} s: "
                         f"{[(r.get('JobId'), r.get('JobState'), r.get('Reason')) for r in records]}")

    def wait_state(self, job_id: str, states: set[str], timeout: float = 120, poll: float = 0.2) -> dict:
        """Wait until some record of the job is in one of ``states``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.job_records(job_id):
                if r.get("JobState") in states:
                    return r
            time.sleep(poll)
        raise SlurmError(f"job {job_id} never reached {sorted(states)} in {timeout:.0f} s "
                         f"(now {self.job_state(job_id)})")


def slurm_or_skip() -> None:
    """Skip (fail under CI) when this machine cannot run the test cluster."""
    missing = missing_binaries()
    reason = None
    if missing:
        reason = (f"SLURM binaries not installed ({', '.join(missing)}): apt-get install -y "
                  "--no-install-recommends slurmctld slurmd slurm-client munge")
    elif os.geteuid() != 0:
        reason = "the test SLURM cluster needs root (slurmd starts jobs as their user)"
    if reason:
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("NEWSDL_REQUIRE_SLURM") == "1":
            pytest.fail(f"CI must run the SLURM tests: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster for the whole test session (see SlurmCluster)."""
    slurm_or_skip()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmError:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
