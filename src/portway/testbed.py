"""A throwaway world for the demo, the benchmarks and the tests: a namespace that plays
the host, joined by a veth (its uplink) to one that plays everything beyond it.

The host namespace gets its own /etc/netns/HOST/resolv.conf naming the outside
namespace, so nothing portway's DNS server forwards can leave this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portway.core.names import parse_owner_tag

# Client programs for `python3 -c` in a namespace: GET URL prints the HTTP status (or
# "fail ERROR"); WAIT ADDRESS PORT returns once something listens there (at most 5 s).
HTTP_GET = ("import sys, urllib.request as u\n"
            "try: print(u.urlopen(sys.argv[1], timeout=2).status)\n"
            "except Exception as e: print('fail', type(e).__name__)\n")
WAIT_LISTENING = ("import socket, sys, time\n"
                  "for _ in range(100):\n"
                  "    try:\n"
                  "        socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.2)"
                  ".close(); break\n"
                  "    except OSError: time.sleep(0.05)\n")

HOST_ADDR = "198.51.100.1"
OUTSIDE_ADDR = "198.51.100.2"
HOST_ADDR6 = "2001:db8:51::1"  # documentation prefixes (RFC 5737, RFC 3849)
OUTSIDE_ADDR6 = "2001:db8:51::2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


# Who made each throwaway namespace: one file per namespace, naming the process that
# made it (pid and start time) and the state dir its portway used, if any. A run that
# was killed (SIGKILL, a machine's time box) never reaches its clean-up; the next run
# removes what such a run left (reap_orphans), and nothing that has no claim here.
OWNERS = Path("/run/portway-testbed")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (pids are reused, this pair
    is not), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def claim(name: str, state_dir: str | os.PathLike[str] | None = None) -> None:
    """Say that this process makes namespace name (before it makes it)."""
    OWNERS.mkdir(mode=0o700, exist_ok=True)
    (OWNERS / name).write_text(json.dumps({
        "pid": os.getpid(), "start": _start_time(os.getpid()),
        "state_dir": str(state_dir) if state_dir is not None else None}))


def release(name: str) -> None:
    (OWNERS / name).unlink(missing_ok=True)


def add_netns(name: str, state_dir: str | os.PathLike[str] | None = None) -> None:
    """A new named namespace with lo up, claimed by this process."""
    claim(name, state_dir)
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def del_netns(name: str) -> None:
    """Remove a namespace of add_netns (missing counts as removed) and its claim. Its
    veths go first, each with its peer at once: a namespace's own links go with it only
    later (the kernel cleans a deleted namespace up on a work queue), and a peer left
    meanwhile in another namespace would look like a leak there."""
    veths = subprocess.run(["ip", "-n", name, "-o", "link", "show", "type", "veth"],
                           capture_output=True, text=True).stdout
    for line in veths.splitlines():
        ifname = line.split(":", 2)[1].strip().split("@", 1)[0]
        subprocess.run(["ip", "-n", name, "link", "del", ifname], capture_output=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    release(name)


def _netns_pids(name: str) -> list[int]:
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _instance(state_dir: str | None) -> str | None:
    db = Path(state_dir or "/nonexistent") / "portway.db"
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _tagged(name: str, instance: str) -> bool:
    """Whether the namespace's lo carries the owner tag of portway instance."""
    cp = subprocess.run(["ip", "-n", name, "-j", "link", "show", "dev", "lo"],
                        capture_output=True, text=True)
    if cp.returncode != 0 or not cp.stdout.strip():
        return False
    alias = (json.loads(cp.stdout) or [{}])[0].get("ifalias")
    tag = parse_owner_tag(alias if isinstance(alias, str) else None)
    return tag is not None and tag[0] == instance


def reap_orphans() -> list[str]:
    """Remove the namespaces whose maker is gone without removing them, with what is
    theirs: the processes in them, the namespaces named after them (NAME-...) or made
    by portway for their state dir (pw-..., known by the owner tag on lo), and their
    /etc/netns entries. The names of the namespaces it removed."""
    try:
        claims = sorted(OWNERS.iterdir())
    except FileNotFoundError:
        return []
    removed: list[str] = []
    for path in claims:
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written: its maker is alive
        if _start_time(int(owner["pid"])) == owner["start"] is not None:
            continue
        name = path.name
        instance = _instance(owner.get("state_dir"))
        try:
            named = sorted(os.listdir("/run/netns"))
        except FileNotFoundError:
            named = []
        # Its own, those named after it (NAME-...), and portway's of its state dir.
        theirs = [name] + [ns for ns in named if ns.startswith(f"{name}-")]
        if instance is not None:
            theirs += [ns for ns in named
                       if ns.startswith("pw") and ns not in theirs and _tagged(ns, instance)]
        for ns in theirs:
            for pid in _netns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if os.path.exists(f"/run/netns/{ns}"):
                removed.append(ns)
            del_netns(ns)
    return removed


def make_world(host: str, outside: str,
               state_dir: str | os.PathLike[str] | None = None) -> None:
    """host and outside, lo up in both, uplink0 (HOST_ADDR, HOST_ADDR6) <-> wan0
    (OUTSIDE_ADDR, OUTSIDE_ADDR6), default routes of both families from the host to
    the outside. Both are claimed (claim), for portway's state dir state_dir."""
    for ns in (host, outside):
        add_netns(ns, state_dir)
    _ip("-n", host, "link", "add", "uplink0", "type", "veth", "peer", "name", "wan0",
        "netns", outside)
    _ip("-n", host, "addr", "add", f"{HOST_ADDR}/24", "dev", "uplink0")
    _ip("-n", outside, "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "wan0")
    _ip("-n", host, "addr", "add", f"{HOST_ADDR6}/64", "dev", "uplink0", "nodad")
    _ip("-n", outside, "addr", "add", f"{OUTSIDE_ADDR6}/64", "dev", "wan0", "nodad")
    _ip("-n", host, "link", "set", "uplink0", "up")
    _ip("-n", outside, "link", "set", "wan0", "up")
    _ip("-n", host, "route", "add", "default", "via", OUTSIDE_ADDR)
    _ip("-n", host, "-6", "route", "add", "default", "via", OUTSIDE_ADDR6)
    os.makedirs(f"/etc/netns/{host}", exist_ok=True)
    with open(f"/etc/netns/{host}/resolv.conf", "w") as f:
        f.write(f"nameserver {OUTSIDE_ADDR}\nsearch example.test\n")


def remove_world(host: str, outside: str) -> None:
    """Both namespaces and the host's /etc/netns entry; missing counts as removed."""
    for ns in (host, outside):
        del_netns(ns)


BUSYBOX_TOOLS = ("sh", "httpd", "nslookup", "wget", "cat", "ip", "sleep", "true")


class PodmanWorld:
    """Podman 4.3 in a host namespace, with its own storage, run, tmp and runc dirs, a
    busybox rootfs, and one helper directory: portway's (a `netavark` wrapper around
    portway-netavark and an `aardvark-dns` stand-in that refuses to run, so Debian's
    are out of reach) or the one given (Debian's /usr/lib/podman, for comparison).
    Podman runs through nsenter: `ip netns exec` would remount /sys and break runc."""

    def __init__(self, host: str, helpers: str | None = None) -> None:
        self.host = host
        self.portway = helpers is None
        # Podman writes these whatever it is told (runc's state dir via a cleanup process
        # that does not get --runtime-flag): removed again if they were not there before.
        self.had = {d: os.path.exists(d) for d in ("/run/containers", "/run/runc")}
        # Short: Podman refuses a runroot path longer than 50 characters.
        self.work = tempfile.mkdtemp(prefix="pwpm-", dir="/tmp")
        rootfs = os.path.join(self.work, "rootfs")
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "www"):
            os.makedirs(os.path.join(rootfs, d))
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
        shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
        for tool in BUSYBOX_TOOLS:
            os.symlink("busybox", os.path.join(rootfs, "bin", tool))
        with open(os.path.join(rootfs, "www", "index.html"), "w") as f:
            f.write("hello from podman\n")
        if helpers is None:
            helpers = os.path.join(self.work, "helpers")
            os.makedirs(helpers)
            bindir = os.path.dirname(sys.executable)
            scripts = {"netavark": f"#!/bin/sh\nexec {bindir}/portway-netavark \"$@\"\n",
                       "aardvark-dns": "#!/bin/sh\necho 'not used: portway serves DNS' >&2\n"
                                       "exit 1\n"}
            for name, text in scripts.items():
                path = os.path.join(helpers, name)
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, 0o755)
        with open(os.path.join(self.work, "containers.conf"), "w") as f:
            f.write(f'[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                    f'[network]\nnetwork_backend = "netavark"\n'
                    f'network_config_dir = "{self.work}/networks"\n'
                    f'[engine]\nhelper_binaries_dir = ["{helpers}"]\n'
                    f'cgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n')

    @property
    def state_dir(self) -> str:
        """portway's state dir: Podman 4.3 passes --config /run/containers/networks."""
        return f"/run/containers/networks/portway/{self.host}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        w = self.work
        cmd = ["nsenter", f"--net=/run/netns/{self.host}", "podman", "--root", f"{w}/root",
               "--runroot", f"{w}/runroot", "--tmpdir", f"{w}/tmp", "--storage-driver", "vfs",
               "--runtime-flag", f"root={w}/runc", *args]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, CONTAINERS_CONF=f"{w}/containers.conf"))
        if check and cp.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed: {cp.stderr.strip()}")
        return cp

    def container(self, *args: str, detach: bool = True) -> str:
        """OPTIONS... -- COMMAND...: the rootfs stands where an image would."""
        split = args.index("--")
        mode = ["-d"] if detach else ["--rm"]
        return self.run("run", *mode, *args[:split], "--rootfs", f"{self.work}/rootfs",
                        *args[split + 1:]).stdout.strip()

    def portway_cmd(self, *args: str) -> list[str]:
        return [os.path.join(os.path.dirname(sys.executable), "portway"), "--host-netns",
                self.host, "--state-dir", self.state_dir, *args]

    def close(self) -> list[str]:
        """Remove Podman's containers and networks and everything of this world; the
        portway containers that Podman's removal left behind (none, if all went well)."""
        self.run("rm", "-af", "-t", "0", check=False)
        self.run("network", "prune", "-f", check=False)
        left: list[str] = []
        if os.path.exists(os.path.join(self.state_dir, "portwayd.sock")):
            left = subprocess.run(self.portway_cmd("ps", "-a", "-q"), capture_output=True,
                                  text=True).stdout.split()
            subprocess.run(self.portway_cmd("daemon", "stop"), capture_output=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        subprocess.run(["rm", "-rf", "--one-file-system", self.work], check=False)
        if not self.had["/run/containers"]:
            shutil.rmtree("/run/containers", ignore_errors=True)
        if not self.had["/run/runc"]:
            try:
                os.rmdir("/run/runc")  # only if empty: runc keeps live containers there
            except OSError:
                pass
        return left



# Where a rootless user's own things live (checked empty again after removal).
ROOTLESS_PLACES = ("/tmp", "/var/tmp", "/run", "/dev/shm", "/home", "/var/mail", "/var/spool")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"  # what a user can run (Debian's, 3.11 as here)


class RootlessPodman:
    """Rootless Podman 4.3 for an unprivileged user made for it, run in a host namespace
    (through nsenter, then setpriv to the user), with a busybox rootfs in the user's home
    and one helper directory there: portway's (as PodmanWorld's) or the one given
    (Debian's /usr/lib/podman, for comparison).

    Made: the user (useradd: its group, its home, its /etc/subuid and /etc/subgid
    ranges), its runtime dir /run/user/UID, and, if /dev/net/tun is not usable by all
    (it is 0600 here; Debian's default is 0666), that mode for slirp4netns. close()
    removes the containers through Podman, ends the user's processes (by pid: every
    process of the user or its subordinate ids is this world's), removes the user with
    its home and ranges and the runtime dir, puts /dev/net/tun's mode back, and
    returns what is still left of the user anywhere it could have written."""

    def __init__(self, host: str, helpers: str | None = None) -> None:
        import secrets

        self.host = host
        self.portway = helpers is None
        self.name = f"pwrl{secrets.token_hex(4)}"
        self.tun_mode: int | None = None
        self.made_user = False
        self.before: set[str] = set()
        try:
            self._make(helpers)
        except BaseException:
            self.close()
            raise

    def _make(self, helpers: str | None) -> None:
        import pwd

        subprocess.run(["useradd", "--create-home", "--user-group", "--shell",
                        "/usr/sbin/nologin", self.name], check=True, capture_output=True)
        self.made_user = True
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, entry.pw_dir
        self.subuids = _subids("/etc/subuid", self.name)
        self.subgids = _subids("/etc/subgid", self.name)
        if self.subuids is None or self.subgids is None:
            subprocess.run(["usermod", "--add-subuids", "3000000000-3000065535",
                            "--add-subgids", "3000000000-3000065535", self.name],
                           check=True, capture_output=True)
            self.subuids = _subids("/etc/subuid", self.name)
            self.subgids = _subids("/etc/subgid", self.name)
        # Files of these ids from before (an earlier user's): not this world's to remove.
        self.before = {path for path in self.leftovers()
                       if path != self.home and not path.startswith(self.home + "/")}
        self.runtime_dir = f"/run/user/{self.uid}"
        os.makedirs("/run/user", mode=0o755, exist_ok=True)
        os.mkdir(self.runtime_dir, 0o700)
        os.chown(self.runtime_dir, self.uid, self.gid)
        mode = os.stat("/dev/net/tun").st_mode & 0o777
        if mode & 0o006 != 0o006:
            self.tun_mode = mode
            os.chmod("/dev/net/tun", 0o666)
        rootfs = os.path.join(self.home, "rootfs")
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "www"):
            os.makedirs(os.path.join(rootfs, d))
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
        shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
        for tool in BUSYBOX_TOOLS:
            os.symlink("busybox", os.path.join(rootfs, "bin", tool))
        with open(os.path.join(rootfs, "www", "index.html"), "w") as f:
            f.write("hello from rootless podman\n")
        # portway for the user: this source tree and pyroute2, run by the system's Python
        # (this venv's may live where the user cannot go, as under /root).
        self.lib = os.path.join(self.home, "lib")
        os.makedirs(self.lib)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.find_spec("pyroute2")
        assert spec is not None and spec.origin is not None
        site = os.path.dirname(os.path.dirname(spec.origin))
        for name, where in (("portway", here), ("pyroute2", site), ("pr2modules", site)):
            if os.path.exists(os.path.join(where, name)):
                os.symlink(os.path.join(where, name), os.path.join(self.lib, name))
        if helpers is None:
            helpers = os.path.join(self.home, "helpers")
            os.makedirs(helpers)
            scripts = {"netavark": f"#!/bin/sh\nPYTHONPATH={self.lib} exec {SYSTEM_PYTHON} -S "
                                   "-m portway.netavark.main \"$@\"\n",
                       "aardvark-dns": "#!/bin/sh\necho 'not used: portway serves DNS' >&2\n"
                                       "exit 1\n"}
            for name, text in scripts.items():
                path = os.path.join(helpers, name)
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, 0o755)
        self.conf = os.path.join(self.home, "containers.conf")
        with open(self.conf, "w") as f:
            # Podman's own directory after it, as docs/podman.md says: rootless Podman runs
            # rootlessport from there (netavark and aardvark-dns are found in the first).
            f.write(f'[network]\nnetwork_backend = "netavark"\n'
                    f'[engine]\nhelper_binaries_dir = ["{helpers}", "/usr/lib/podman"]\n'
                    f'cgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n')
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", self.home], check=True)

    @property
    def state_dir(self) -> str:
        """portway's state dir: Podman passes --config $XDG_RUNTIME_DIR/containers/networks
        when rootless."""
        return f"{self.runtime_dir}/containers/networks/portway/rootless"

    def as_user(self, *cmd: str, netns: bool = True) -> list[str]:
        """cmd run as the user, with the environment of a login, in the host namespace
        (netns) or the caller's."""
        user = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "env", "-i", f"HOME={self.home}", f"USER={self.name}",
                f"LOGNAME={self.name}", f"XDG_RUNTIME_DIR={self.runtime_dir}", f"PATH={PATH}",
                f"CONTAINERS_CONF={self.conf}", *cmd]
        return ["nsenter", f"--net=/run/netns/{self.host}", *user] if netns else user

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(self.as_user("podman", "--storage-driver", "vfs", *args),
                            capture_output=True, text=True, timeout=180, cwd=self.home)
        if check and cp.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed: {cp.stderr.strip()}")
        return cp

    def container(self, *args: str, detach: bool = True) -> str:
        """OPTIONS... -- COMMAND...: the rootfs stands where an image would."""
        split = args.index("--")
        mode = ["-d"] if detach else ["--rm"]
        return self.run("run", *mode, *args[:split], "--rootfs", f"{self.home}/rootfs",
                        *args[split + 1:]).stdout.strip()

    def portway_cmd(self, *args: str) -> list[str]:
        """portway, pointed at the user's state, run by the user in their rootless
        network namespace (podman unshare --rootless-netns)."""
        return self.as_user("podman", "--storage-driver", "vfs", "unshare",
                            "--rootless-netns", "env", f"PYTHONPATH={self.lib}",
                            SYSTEM_PYTHON, "-S", "-m", "portway.cli.main",
                            "--state-dir", self.state_dir, *args)

    def processes(self) -> list[int]:
        """The user's processes: those of its uid or of its subordinate uids."""
        ids = {self.uid}
        low, count = self.subuids or (0, 0)
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as f:
                    uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration, ValueError):
                continue
            if uid in ids or low <= uid < low + count:
                pids.append(int(entry))
        return pids

    def close(self) -> list[str]:
        """Remove everything of this world; what is still left of it (nothing, if all
        went well)."""
        left: list[str] = []
        if self.made_user:
            if hasattr(self, "conf"):
                self.run("rm", "-af", "-t", "0", check=False)
            for _ in range(100):
                pids = self.processes()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            else:
                left.append(f"processes {self.processes()}")
            subprocess.run(["userdel", "--remove", self.name], capture_output=True)
            for path in ("/etc/subuid", "/etc/subgid"):
                if _subids(path, self.name) is not None:
                    _drop_line(path, self.name)
            shutil.rmtree(getattr(self, "runtime_dir", "/nonexistent"), ignore_errors=True)
            subprocess.run(["rm", "-rf", "--one-file-system",
                            getattr(self, "home", f"/home/{self.name}")], check=False)
            if hasattr(self, "uid"):
                # What else the user made (Podman's lock file in /dev/shm): all of it
                # is this world's, the user being its own.
                for path in self.leftovers():
                    if path.startswith("/") and ":" not in path and \
                            path not in self.before:
                        subprocess.run(["rm", "-rf", "--one-file-system", path],
                                       check=False)
        if self.tun_mode is not None:
            os.chmod("/dev/net/tun", self.tun_mode)
        if self.made_user and hasattr(self, "uid"):
            left += [path for path in self.leftovers() if path not in self.before]
        return left

    def leftovers(self) -> list[str]:
        """Files of the user or its subordinate ids still in the places it could write,
        its passwd, group and subordinate-id lines."""
        low, count = self.subuids or (self.uid, 1)
        found = subprocess.run(["find", *ROOTLESS_PLACES, "-xdev", "(", "-uid", str(self.uid),
                                "-o", "-uid", f"+{low - 1}", "-uid", f"-{low + count}", ")",
                                "-print"], capture_output=True, text=True).stdout.split()
        for path in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/subuid", "/etc/subgid"):
            with open(path) as f:
                if any(line.split(":")[0] == self.name for line in f):
                    found.append(f"{path}: {self.name}")
        return found


def _subids(path: str, name: str) -> tuple[int, int] | None:
    """name's (first id, count) in /etc/subuid or /etc/subgid, or None."""
    with open(path) as f:
        for line in f:
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[0] == name:
                return int(fields[1]), int(fields[2])
    return None


def _drop_line(path: str, name: str) -> None:
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(line for line in lines if line.split(":")[0] != name)

# A host like Docker's, made by hand (for `portway audit`'s tests and docs/audit.md): two
# bridges, docker0 (172.17.0.1/16) and br-two (172.18.0.1/16), a container behind each
# (a plain namespace with a veth, 172.17.0.2 and 172.18.0.2, a TCP server on port 80),
# the host's own servers on 0.0.0.0:9000 and 127.0.0.1:9001, forwarding and
# route_localnet on the uplink, and the rules given (nft's; and iptables-nft's, if
# given, as Docker writes them). The outside namespace plays a neighbour on the uplink
# that routes the containers' networks and 127.0.0.1 to the host (it gives up its own
# 127/8 for that), and a routed client at ROUTED_CLIENT.

ROUTED_CLIENT = "203.0.113.10"
# A TCP server that answers each connection with "hi" and the client's address.
HI_SERVER = ("import socket, sys\n"
             "s = socket.socket()\n"
             "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             "s.bind((sys.argv[1], int(sys.argv[2])))\n"
             "s.listen()\n"
             "while True:\n"
             "    c, a = s.accept()\n"
             "    c.sendall(b'hi ' + a[0].encode())\n"
             "    c.close()\n")
# CONNECT ADDRESS PORT [SOURCE]: what the server says, or "fail ERROR".
CONNECT = ("import socket, sys\n"
           "src = (sys.argv[3], 0) if len(sys.argv) > 3 else None\n"
           "try:\n"
           "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 2, src)\n"
           "    print(s.recv(100).decode())\n"
           "except OSError as e:\n"
           "    print('fail', type(e).__name__)\n")


def connect(netns: str, addr: str, port: int, source: str | None = None) -> str:
    """A TCP connection from netns to a HI_SERVER: its answer, or "fail ERROR"."""
    args = [addr, str(port), *([source] if source else [])]
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CONNECT,
                           *args], capture_output=True, text=True, timeout=30).stdout.strip()


class DockerLike:
    """The host above in host (with its outside), built on creation; remove() takes
    away everything it made (its servers by pid, its links, its namespaces)."""

    def __init__(self, host: str, outside: str, ruleset: str, iptables: str = "") -> None:
        self.host, self.outside = host, outside
        self.c1, self.c2 = f"{host}-c1", f"{host}-c2"
        self.servers: list[subprocess.Popen[bytes]] = []
        try:
            self._build(ruleset, iptables)
        except BaseException:
            self.remove()
            raise

    def _build(self, ruleset: str, iptables: str) -> None:
        h, o = self.host, self.outside
        for bridge, gw in (("docker0", "172.17.0.1"), ("br-two", "172.18.0.1")):
            _ip("-n", h, "link", "add", bridge, "type", "bridge")
            _ip("-n", h, "addr", "add", f"{gw}/16", "dev", bridge)
            _ip("-n", h, "link", "set", bridge, "up")
        for name, bridge, veth, addr, gw in (
                (self.c1, "docker0", "vethc1", "172.17.0.2", "172.17.0.1"),
                (self.c2, "br-two", "vethc2", "172.18.0.2", "172.18.0.1")):
            add_netns(name)
            _ip("-n", h, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", name)
            _ip("-n", h, "link", "set", veth, "master", bridge, "up")
            _ip("-n", name, "addr", "add", f"{addr}/16", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "route", "add", "default", "via", gw)
        for key in ("ip_forward", "conf.uplink0.route_localnet"):
            _ip("netns", "exec", h, "sysctl", "-qw", f"net.ipv4.{key}=1")
        subprocess.run(["ip", "netns", "exec", h, "nft", "-f", "-"], input=ruleset,
                       text=True, check=True, capture_output=True)
        if iptables:  # as Docker writes its rules: through iptables-nft
            subprocess.run(["ip", "netns", "exec", h, "iptables-nft-restore", "--noflush"],
                           input=iptables, text=True, check=True, capture_output=True)
        # (Idempotent: the outside may play this part a second time.)
        for net in ("172.17.0.0/16", "172.18.0.0/16"):
            _ip("-n", o, "route", "replace", net, "via", HOST_ADDR)
        for local in ("127.0.0.0/8", "127.0.0.1"):
            subprocess.run(["ip", "-n", o, "route", "del", "local", local, "dev", "lo",
                            "table", "local"], capture_output=True)
        _ip("-n", o, "route", "replace", "127.0.0.1/32", "via", HOST_ADDR)
        for key in ("all.route_localnet", "wan0.route_localnet", "wan0.accept_local"):
            _ip("netns", "exec", o, "sysctl", "-qw", f"net.ipv4.conf.{key}=1")
        _ip("-n", o, "addr", "replace", f"{ROUTED_CLIENT}/32", "dev", "lo")
        for netns, addr, port in ((self.c1, "0.0.0.0", 80), (self.c2, "0.0.0.0", 80),
                                  (h, "0.0.0.0", 9000), (h, "127.0.0.1", 9001)):
            self.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-c", HI_SERVER, addr,
                 str(port)]))
            subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                            WAIT_LISTENING, "127.0.0.1", str(port)], check=True, timeout=30)

    def remove(self) -> None:
        for p in self.servers:  # ip netns exec became the server: its own pid
            p.kill()
            p.wait()
        # The links first: a namespace's removal takes its veths away only later.
        for link in ("vethc1", "vethc2", "docker0", "br-two"):
            subprocess.run(["ip", "-n", self.host, "link", "del", link], capture_output=True)
        for name in (self.c1, self.c2):
            del_netns(name)


# Overlay networks: hosts on an underlay, and an etcd that they share.

UNDERLAY_PREFIX = "192.0.2."  # documentation prefix (RFC 5737)
ETCD_ADDR = UNDERLAY_PREFIX + "100"


def underlay_address(index: int) -> str:
    """The underlay address of the index-th host (from 0): 192.0.2.1, .2, ..."""
    return f"{UNDERLAY_PREFIX}{index + 1}"


def make_underlay(underlay: str, hosts: list[str]) -> None:
    """underlay: a namespace with a bridge (ulbr, holding ETCD_ADDR), and a veth from it
    to each host (ul0 there, underlay_address(i)). Claimed (claim) as add_netns does;
    the host namespaces must exist."""
    add_netns(underlay)
    _ip("-n", underlay, "link", "add", "ulbr", "type", "bridge")
    _ip("-n", underlay, "addr", "add", f"{ETCD_ADDR}/24", "dev", "ulbr")
    _ip("-n", underlay, "link", "set", "ulbr", "up")
    for i, host in enumerate(hosts):
        port = f"ul{i}"
        _ip("-n", underlay, "link", "add", port, "type", "veth", "peer", "name", "ul0",
            "netns", host)
        _ip("-n", underlay, "link", "set", port, "master", "ulbr", "up")
        _ip("-n", host, "addr", "add", f"{underlay_address(i)}/24", "dev", "ul0")
        _ip("-n", host, "link", "set", "ul0", "up")


def start_etcd(underlay: str, data_dir: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    """A one-member etcd (Debian's etcd-server) in the underlay namespace on ETCD_ADDR,
    its data and log (etcd.log beside it) in data_dir's parent; returns once it answers.
    The caller stops it by its pid (stop_etcd)."""
    url = f"http://{ETCD_ADDR}"
    data = Path(data_dir)
    with open(data.parent / "etcd.log", "wb") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", underlay, "etcd", "--name", "pw", "--data-dir", str(data),
             "--listen-client-urls", f"{url}:2379", "--advertise-client-urls", f"{url}:2379",
             "--listen-peer-urls", f"{url}:2380", "--initial-advertise-peer-urls",
             f"{url}:2380", "--initial-cluster", f"pw={url}:2380"],
            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        cp = subprocess.run(["ip", "netns", "exec", underlay, "etcdctl", "--endpoints",
                             f"{url}:2379", "endpoint", "health"], capture_output=True)
        if cp.returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_etcd(proc)
    raise RuntimeError("etcd did not start: " + (data.parent / "etcd.log").read_text()[-2000:])


def etcd_member_address(index: int) -> str:
    """The underlay address of the index-th member of start_etcd_cluster (from 0)."""
    return f"{UNDERLAY_PREFIX}{100 + index}"


def start_etcd_cluster(underlay: str, data_dir: str | os.PathLike[str],
                       members: int = 3) -> list[subprocess.Popen[bytes]]:
    """members etcd processes forming one cluster in the underlay namespace, on
    etcd_member_address(0..) (the first is ETCD_ADDR, which make_underlay gave ulbr; the
    others are added to it), data in data_dir/mN, logs beside as etcd-mN.log. Returns
    once all answer; the caller stops each by its pid (stop_etcd)."""
    base = Path(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    names = [f"m{i}" for i in range(members)]
    peers = ",".join(f"{n}=http://{etcd_member_address(i)}:2380" for i, n in enumerate(names))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(members):
            if i:
                _ip("-n", underlay, "addr", "add", f"{etcd_member_address(i)}/24", "dev",
                    "ulbr")
            procs.append(_etcd_member(underlay, base, i, peers))
        endpoints = ",".join(f"http://{etcd_member_address(i)}:2379" for i in range(members))
        for _ in range(300):
            cp = subprocess.run(["ip", "netns", "exec", underlay, "etcdctl", "--endpoints",
                                 endpoints, "endpoint", "health"], capture_output=True)
            if cp.returncode == 0:
                return procs
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        raise RuntimeError("etcd cluster did not start: " + "".join(
            (base / f"etcd-{n}.log").read_text()[-1000:] for n in names))
    except BaseException:
        for p in procs:
            stop_etcd(p)
        raise


def _etcd_member(underlay: str, base: Path, index: int,
                 peers: str) -> subprocess.Popen[bytes]:
    """Member index of a cluster (its data in base/mINDEX, log beside it, appended to);
    with data there already, etcd takes its membership from it."""
    name, url = f"m{index}", f"http://{etcd_member_address(index)}"
    with open(base / f"etcd-{name}.log", "ab") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", underlay, "etcd", "--name", name,
             "--data-dir", str(base / name),
             "--listen-client-urls", f"{url}:2379",
             "--advertise-client-urls", f"{url}:2379",
             "--listen-peer-urls", f"{url}:2380",
             "--initial-advertise-peer-urls", f"{url}:2380",
             "--initial-cluster", peers, "--initial-cluster-state", "new"],
            stdout=log, stderr=subprocess.STDOUT)


def restart_etcd_member(underlay: str, data_dir: str | os.PathLike[str], index: int,
                        members: int = 3) -> subprocess.Popen[bytes]:
    """Member index of start_etcd_cluster again (stopped before), from its data; returns
    once it answers."""
    peers = ",".join(f"m{i}=http://{etcd_member_address(i)}:2380" for i in range(members))
    proc = _etcd_member(underlay, Path(data_dir), index, peers)
    url = f"http://{etcd_member_address(index)}:2379"
    for _ in range(300):
        cp = subprocess.run(["ip", "netns", "exec", underlay, "etcdctl", "--endpoints", url,
                             "endpoint", "health"], capture_output=True)
        if cp.returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_etcd(proc)
    raise RuntimeError(f"etcd member m{index} did not start again")


def stop_etcd(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
