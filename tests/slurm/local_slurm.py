"""A real Slurm on this machine for the tests: Debian's slurm-wlm 22.05, several slurmd as
simulated nodes, munge for authentication. No systemd, no cgroups.

    cluster = LocalSlurm(nodes=2, cpus_per_node=4)
    cluster.start()          # installs the packages if needed (apt, as root), configures, starts
    subprocess.run(["sbatch", ...], env=cluster.env)   # SLURM_CONF points at our slurm.conf
    cluster.stop()           # stops only the daemons it started, by pid

Why these settings (each one was needed): SlurmctldHost=localhost (independent of the host name);
proctrack/linuxproc and task/none (no cgroups in a container); cons_tres with nodes declaring
more CPUs than the machine has (config_overrides), else a 4-task job stays PENDING forever;
ReturnToService=2; no accounting (so no sacct: use squeue/scontrol); AuthInfo cred_expire=10, else
a requeued job waits ~150 s before it runs again. Node names resolve through /etc/hosts lines this
class adds and removes. Every Slurm client needs SLURM_CONF: without a slurm.conf they hang ~60 s.

Node-local storage: on a real cluster /tmp is a different disk on every node, here it is one. A
TaskProlog gives every task (batch script and srun tasks alike) TMPDIR=ROOT/tmp/<node name>, so
code that passes a temporary path from one node to another fails here as it would there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
HOSTS = Path("/etc/hosts")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or started here (the tests skip with this reason)."""


def _free_port_block(count: int) -> int:
    """First port of `count` consecutive free ports."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        try:
            sockets = []
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise SlurmUnavailable("no block of free ports for slurmctld/slurmd")


def install() -> None:
    """apt-get install Debian's Slurm and munge without starting their services."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and installing it needs root")
    created_policy = not POLICY_RC.exists()
    if created_policy:  # keep apt from starting daemons
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                                capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            update = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
            result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                                    capture_output=True, text=True, env=env, timeout=600)
            if result.returncode != 0:
                raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: "
                                       f"{(update.stderr + result.stderr)[-800:]}")
    finally:
        if created_policy:
            POLICY_RC.unlink(missing_ok=True)


class LocalSlurm:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 4, root: Optional[Path] = None):
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.root = Path(root or tempfile.mkdtemp(prefix="slurm-"))
        self.root.chmod(0o755)  # munged (user munge) must reach its directory below
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        self.procs: List[subprocess.Popen] = []
        self.hosts_line: Optional[str] = None

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def env(self) -> Dict[str, str]:
        """Environment for Slurm clients (sbatch, squeue, scontrol, glm-launch submit)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    # --- setup ------------------------------------------------------------------------------
    def node_tmpdir(self, node: str) -> Path:
        """The TMPDIR every task on `node` sees."""
        return self.root / "tmp" / node

    def _write_config(self) -> None:
        for sub in ("etc", "state", "log", "run", "munge", *(f"spool/{n}" for n in self.node_names)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for node in self.node_names:
            self.node_tmpdir(node).mkdir(parents=True, exist_ok=True)
            self.node_tmpdir(node).chmod(0o1777)
        task_prolog = self.root / "etc" / "task_prolog.sh"
        task_prolog.write_text(f"#!/bin/sh\n# Written by tests/slurm/local_slurm.py: a node-local TMPDIR per simulated node.\n"
                               f"echo \"export TMPDIR={self.root}/tmp/$SLURMD_NODENAME\"\n")
        task_prolog.chmod(0o755)
        ctld_port = _free_port_block(1 + self.nodes)
        first_node_port = ctld_port + 1
        r = self.root
        self.conf.write_text(f"""# Written by tests/slurm/local_slurm.py
ClusterName=glmtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket,cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
TaskProlog={r}/etc/task_prolog.sh
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
SwitchType=switch/none
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
NodeName={self._range()} NodeHostname=localhost NodeAddr=127.0.0.1 Port={first_node_port}-{first_node_port + self.nodes - 1} CPUs={self.cpus_per_node} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={self._range()} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def _range(self) -> str:
        return f"node[1-{self.nodes}]"

    def _add_hosts(self) -> None:
        text = HOSTS.read_text()
        known = {name for line in text.splitlines() if not line.lstrip().startswith("#") for name in line.split()[1:]}
        missing = [n for n in self.node_names if n not in known]
        if missing:
            self.hosts_line = f"127.0.0.1 {' '.join(missing)}  # glm-launch tests ({self.root})"
            with HOSTS.open("a") as hosts:
                hosts.write(("" if text.endswith("\n") else "\n") + self.hosts_line + "\n")

    def _remove_hosts(self) -> None:
        if self.hosts_line:
            lines = HOSTS.read_text().splitlines()
            HOSTS.write_text("".join(line + "\n" for line in lines if line != self.hosts_line))
            self.hosts_line = None

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        directory = self.root / "munge"
        key = directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path in (directory, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        directory.chmod(0o755)  # clients must reach the socket
        key.chmod(0o400)
        self._spawn(["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--init-groups",
                     "munged", "--foreground", f"--key-file={key}", f"--socket={directory}/munge.socket",
                     f"--pid-file={directory}/munged.pid", f"--log-file={directory}/munged.log",
                     f"--seed-file={directory}/munged.seed"], "munged")
        self._wait(lambda: (directory / "munge.socket").exists(), 20, "munged did not create its socket")

    def _spawn(self, command: List[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "w")
        self.procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))
        log.close()

    def _wait(self, ready, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{message}: {dead[0].args[0]} exited with {dead[0].returncode}; "
                                       f"logs in {self.root / 'log'}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"{message} within {timeout:.0f}s; logs in {self.root / 'log'}")

    def _nodes_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=self.env,
                             timeout=30).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return len(states) == self.nodes and all(state == "idle" for state in states.values())

    def start(self) -> "LocalSlurm":
        install()
        self._write_config()
        self._add_hosts()
        try:
            self._start_munge()
            self._spawn(["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)], "slurmctld")
            time.sleep(1.0)
            for name in self.node_names:
                self._spawn(["slurmd", "-D", "-N", name, "-f", str(self.conf)], f"slurmd-{name}")
            self._wait(self._nodes_idle, 60, "the simulated nodes did not come up idle")
        except BaseException:
            self.stop()
            raise
        return self

    # --- teardown ---------------------------------------------------------------------------
    def cancel_all(self, wait_s: float = 0.0) -> None:
        """scancel every job; with wait_s, wait (up to that long) until none is left: the jobs'
        slurmstepd processes are not ours to kill, their slurmd must end them before it stops."""
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True,
                                  timeout=30)
            if jobs.returncode != 0 or not jobs.stdout.strip():
                return
            time.sleep(1.0)

    def stop(self) -> None:
        """Stop the daemons this instance started (slurmd first, munge last), by pid, once the
        jobs still running are cancelled and gone (a failed test leaves some)."""
        try:
            if self.procs and self.conf.exists():
                self.cancel_all(wait_s=90)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
        self._remove_hosts()

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)
