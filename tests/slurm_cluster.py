"""A throw-away single-node SLURM cluster on localhost, for tests.

Everything it runs (munged, slurmctld, slurmd) is started from a generated
configuration in one directory and stopped by `SlurmCluster.stop()`; nothing
under /etc is read or written, so it neither needs nor disturbs a system
SLURM or munge. Commands run with `SlurmCluster.env` reach this cluster: its
PATH starts with wrappers of the client programs that name the generated
slurm.conf, and `sbatch --export=ALL` hands that PATH on to the jobs.

There is no accounting database: `sacct` cannot see jobs, so callers query job
states with `squeue`, which keeps finished jobs for `MinJobAge` seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_PACKAGES = ("slurm-wlm", "munge")
REQUIRED_PROGRAMS = (
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "sinfo",
    "srun",
    "scancel",
    "sacct",
)
CLIENT_PROGRAMS = ("sbatch", "squeue", "scontrol", "sinfo", "srun", "scancel", "sacct")
PARTITION = "capatlas_test"
# squeue reports a finished job only while the controller keeps it; this must
# outlast the executor's polling interval (which grows up to 180 s), or a
# finished job would be taken for a lost one.
MIN_JOB_AGE_S = 900


def missing_programs() -> list[str]:
    return [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]


def ensure_installed(timeout_s: int = 600) -> str | None:
    """Install Debian's SLURM and munge when missing; return why not, or None when ready."""
    if not missing_programs():
        return None
    if shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_programs())} missing) and there is no apt-get"
    if os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(missing_programs())} missing) and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_PACKAGES]
    # Package scripts would start the system's munged and slurm daemons (from
    # /etc, which this cluster does not use); a policy-rc.d that denies every
    # start keeps them down, and is removed again if this created it.
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created_policy = True
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            # A fresh machine may have no package lists yet.
            update = subprocess.run(
                ["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout_s
            )
            if update.returncode != 0:
                return f"apt-get update failed: {update.stderr.strip()[-500:]}"
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            return f"apt-get install {' '.join(DEBIAN_PACKAGES)} failed: {result.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired:
        return f"apt-get did not finish within {timeout_s} s"
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)
    still_missing = missing_programs()
    if still_missing:
        return f"installed {' '.join(DEBIAN_PACKAGES)} but {', '.join(still_missing)} still missing"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _real_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf(root: Path, *, host: str, cpus: int, memory_mb: int) -> str:
    """A minimal slurm.conf: one node, one default partition, no accounting, no cgroups."""
    return f"""\
ClusterName=capatlas-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
# The node is described by this file, not probed: a shared CI machine may
# report a different core count or memory from one run to the next.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict
    partition: str = PARTITION
    processes: list = field(default_factory=list)

    def command(self, *args: str, check: bool = True, timeout: int = 30) -> str:
        result = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}\n{self.logs()}")
        return result.stdout

    def job_ids(self) -> list[str]:
        """Ids of every job the controller still knows (running or finished < MinJobAge ago)."""
        out = self.command("squeue", "--noheader", "--states=all", "--format=%i")
        return out.split()

    def logs(self) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel leftover jobs and stop every daemon this cluster started."""
        if self.processes and all(p.poll() is None for p in self.processes):
            ids = []
            try:
                ids = self.command("squeue", "--noheader", "--format=%i", check=False).split()
                if ids:
                    self.command("scancel", *ids, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
        # slurmd first (it owns the job steps), munged last (the others authenticate through it).
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)
        self.processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_for(predicate, what: str, cluster: SlurmCluster, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.args[0]} exited with {process.returncode} while waiting for {what}\n"
                    f"{cluster.logs()}"
                )
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{cluster.logs()}")


def start_cluster(cpus: int | None = None, memory_mb: int | None = None) -> SlurmCluster:
    """Start munged, slurmctld and slurmd on localhost; the caller must call stop().

    The directory is short and under /tmp because munge's socket path must
    fit in a Unix socket address (108 bytes).
    """
    root = Path(tempfile.mkdtemp(prefix="capatlas-slurm-"))
    for sub in ("munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(mode=0o700)
    host = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    # Leave the machine some memory: jobs ask for what the rules declare.
    memory_mb = memory_mb or max(1024, _real_memory_mb() - 512)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host=host, cpus=cpus, memory_mb=memory_mb))
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)

    # Every client command is reached through a wrapper that names this
    # cluster's slurm.conf: SLURM_CONF alone does not reach the `srun` inside
    # a job, because the executor plugin's job step drops all SLURM_*
    # variables before it calls srun (a real node finds /etc/slurm/slurm.conf).
    wrappers = root / "bin"
    wrappers.mkdir()
    for name in CLIENT_PROGRAMS:
        wrapper = wrappers / name
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which(name)} "$@"\n')
        wrapper.chmod(0o755)
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        "PATH": f"{wrappers}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Inherited SLURM_* variables (a test run inside a SLURM job) would point
    # the commands at another cluster's job.
    for name in list(env):
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and name != "SLURM_CONF":
            del env[name]
    cluster = SlurmCluster(root=root, conf=conf, env=env)

    def launch(*args: str, log_name: str) -> None:
        log = open(root / "log" / log_name, "ab")
        cluster.processes.append(
            subprocess.Popen(list(args), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        log.close()

    try:
        socket_path = root / "munge" / "munge.socket"
        launch(
            "munged",
            "--foreground",
            "--force",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={root}/run/munged.pid",
            f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge/munged.seed",
            log_name="munged.out.log",
        )
        _wait_for(socket_path.exists, "the munge socket", cluster)
        launch("slurmctld", "-D", "-i", "-f", str(conf), log_name="slurmctld.out.log")
        _wait_for(
            lambda: subprocess.run(
                ["scontrol", "ping"], env=env, capture_output=True, text=True
            ).stdout.count("UP") > 0,
            "slurmctld",
            cluster,
        )
        launch("slurmd", "-D", "-N", host, "-f", str(conf), log_name="slurmd.out.log")

        def node_idle() -> bool:
            state = cluster.command("sinfo", "--noheader", "--format=%T", "-n", host, check=False)
            return state.strip().rstrip("*~#") == "idle"

        _wait_for(node_idle, f"node {host} to become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster
