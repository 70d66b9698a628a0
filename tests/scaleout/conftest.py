"""Real engines on loopback for the scale-out tests: a one-node Slurm cluster (munge, slurmctld,
slurmd) and a JetStream-enabled nats-server, each started in a temp dir and torn down.
Both listen on 127.0.0.1 only (Slurm: ``CommunicationParameters=NoInAddrAny,NoCtldInAddrAny``,
so its daemons bind the node's address instead of every interface; the training jobs
rendezvous on 127.0.0.1 too, ``test_slurm.job_env``).

The binaries are Debian's (``make system`` installs them; scripts/install-system.sh). A missing
binary fails the test with that fix rather than skipping it, so CI cannot pass without them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = pwd.getpwuid(os.getuid()).pw_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed; run `make system` (scripts/install-system.sh)")
    return path


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM a process we started, SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


SLURM_CONF = """\
ClusterName=gigafactory-test
SlurmctldHost={host}(127.0.0.1)
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """One slurmctld and one slurmd (this machine's CPUs) authenticated by a private munged."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))

    def start(self) -> SlurmCluster:
        root = self.root
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o700)
        key, sock = root / "munge" / "munge.key", root / "munge" / "munge.sock"
        subprocess.run([binary("mungekey"), "-c", "-k", str(key)], check=True)
        munged = [binary("munged"), "-F", "-f", f"--key-file={key}", f"--socket={sock}",
                  f"--pid-file={root / 'munge' / 'pid'}", f"--seed-file={root / 'munge' / 'seed'}",
                  f"--log-file={root / 'log' / 'munged.log'}"]  # fmt: skip
        self._spawn(munged, "munged")
        wait_for(sock.exists, 10, "munged's socket")
        host = socket.gethostname().split(".")[0]
        (root / "slurm.conf").write_text(
            SLURM_CONF.format(
                host=host,
                root=root,
                munge_socket=sock,
                user=USER,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                cpus=os.cpu_count() or 1,
            )
        )
        self._spawn([binary("slurmctld"), "-D", "-i"], "slurmctld")
        self._spawn([binary("slurmd"), "-D"], "slurmd")
        wait_for(lambda: self.node_state() == "idle", 30, "the Slurm node to become idle", 0.3)
        return self

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def run(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full = {**self.env, **(env or {})}
        return subprocess.run(
            [binary(cmd[0]), *cmd[1:]], env=full, capture_output=True, text=True, timeout=60
        )

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-o", "%t").stdout.strip()

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> int:
        """Submit; returns the job id."""
        res = self.run("sbatch", "--parsable", *args, env=env)
        assert res.returncode == 0, res.stderr
        return int(res.stdout.strip().split(";")[0])

    def job_state(self, job: int) -> str:
        """PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, ... (from slurmctld's memory)."""
        res = self.run("scontrol", "show", "job", str(job), "-o")
        fields = dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)
        return fields.get("JobState", "UNKNOWN")

    def wait_job(self, job: int, timeout_s: float) -> str:
        """Wait until the job has left the queue; returns its final state."""
        return wait_for(
            lambda: (s := self.job_state(job)) not in ("PENDING", "RUNNING", "COMPLETING") and s,
            timeout_s,
            f"Slurm job {job} to end",
            0.3,
        )

    def close(self) -> None:
        """Cancel what is left and stop the daemons, whatever fails on the way (a scancel that
        times out or errs must not leave munged, slurmctld or slurmd running)."""
        try:
            self.run("scancel", "--full", "--user", USER)
        except (OSError, subprocess.SubprocessError, pytest.fail.Exception):
            pass  # the daemons go below all the same, and their jobs with them
        finally:
            for proc in reversed(self.procs):
                try:
                    stop(proc)
                except (OSError, subprocess.SubprocessError):
                    proc.kill()  # one we started: never left behind


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.close()


class NatsServer:
    """``nats-server -js`` on 127.0.0.1 with its store in a temp dir; restartable on the same
    port and store."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> NatsServer:
        self.starts += 1
        log = (self.root / f"nats-{self.starts}.log").open("w")
        cmd = [binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.port),
               "-sd", str(self.root / "store")]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._accepts, 10, "nats-server to accept connections")
        return self

    def _accepts(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        """SIGKILL the server (no shutdown of its store)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    try:
        yield server.start()
    finally:
        server.close()
