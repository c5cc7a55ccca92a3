"""Hosts with their own addresses on one machine, for tests: network namespaces on a private bridge.

    with private_hosts(2) as hosts:          # None where not allowed (`why=` gets the reason)
        hosts.bridge_addr                    # 10.77.0.1 (or 10.77.N.1 if taken): this namespace, the head's
        hosts.addr("w1"), hosts.run_in("w1") # 10.77.0.2, the command prefix of host w1 (ip netns exec ...)
        hosts.cut("w1"); hosts.heal("w1")    # its link down (its processes stay alive), and up again

Nothing leaves the bridge: no default route in any namespace, and it refuses to run where the root namespace
forwards IPv4 (/proc/sys/net/ipv4/ip_forward = 1). Every name carries this process's pid (`ildb<pid>` the
bridge, `ildv<pid>w<i>` the veths, `ild-<pid>-w<i>` the namespaces); leftovers of a process that is gone are
deleted first, and everything made here is deleted at the end, failure or not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# 10.77.0.0/24, else the next free one of 10.77.1-15.0/24 (another test process on this machine has it).
SUBNETS = [f"10.77.{n}" for n in range(16)]
_NAME = re.compile(r"^ild(?:b|v|-)(\d+)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip ARGS...`, captured; raises on failure with ip's own message when `check`."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def hosts_unavailable() -> str:
    """Why namespaces on a bridge cannot be made here ('' where they can)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    try:
        forward = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    except OSError as exc:
        return f"cannot read /proc/sys/net/ipv4/ip_forward ({exc})"
    if forward != "0":
        return "the root namespace forwards IPv4 (ip_forward=1): test addresses could leave the machine"
    return ""


def _alive(pid: int) -> bool:
    return pid != os.getpid() and os.path.exists(f"/proc/{pid}")


def clean_stale() -> list[str]:
    """Delete the bridges, veths and namespaces of earlier runs whose process is gone; their names."""
    gone = []
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        m = _NAME.match(name)
        if m and name.startswith(("ildb", "ildv")) and not _alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            gone.append(name)
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and name.startswith("ild-") and not _alive(int(m.group(1))):
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


@dataclass
class Hosts:
    """The bridge and the namespaces made by `private_hosts`: host name -> (namespace, root-side veth, address)."""

    bridge: str
    subnet: str  # the first three numbers of the bridge's /24: 10.77.0
    bridge_addr: str
    ns: dict[str, str] = field(default_factory=dict)
    veth: dict[str, str] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)

    def addr(self, host: str) -> str:
        """The address of `host` on the bridge."""
        return self.addrs[host]

    def run_in(self, host: str) -> list[str]:
        """The command prefix that runs a command in `host`'s network namespace."""
        return ["ip", "netns", "exec", self.ns[host]]

    def cut(self, host: str) -> None:
        """Take `host`'s link down at the bridge: its processes live on, cut off from every other host."""
        _ip("link", "set", self.veth[host], "down")

    def heal(self, host: str) -> None:
        """Bring `host`'s link back up."""
        _ip("link", "set", self.veth[host], "up")


def _teardown(hosts: Hosts) -> list[str]:
    problems = []
    for name in hosts.veth.values():
        _ip("link", "del", name, check=False)
    for name in hosts.ns.values():
        done = _ip("netns", "del", name, check=False)
        if done.returncode != 0:
            problems.append(done.stderr.strip())
    if hosts.bridge:
        _ip("link", "del", hosts.bridge, check=False)
    left = _ip("-o", "link", "show", check=False).stdout
    problems += [
        n for n in [hosts.bridge, *hosts.veth.values()] if n and (f" {n}:" in left or f" {n}@" in left)
    ]
    return problems


@contextmanager
def private_hosts(count: int, why: list[str] | None = None) -> Iterator[Hosts | None]:
    """`count` hosts w1..wN at 10.77.0.2.. on a bridge at 10.77.0.1 (this namespace); None where
    `hosts_unavailable()` or every subnet is taken (the reason appended to `why`). Deleted at the end."""
    reason = hosts_unavailable()
    if not reason:
        clean_stale()
        used = _ip("-o", "-4", "addr", "show", check=False).stdout
        free = [net for net in SUBNETS if f" {net}." not in used]
        reason = "" if free else f"every subnet of {SUBNETS[0]}-{SUBNETS[-1]}.0/24 is in use here"
    if reason:
        if why is not None:
            why.append(reason)
        yield None
        return
    tag = str(os.getpid())
    hosts = Hosts(bridge=f"ildb{tag}", subnet=free[0], bridge_addr=f"{free[0]}.1")
    try:
        _ip("link", "add", hosts.bridge, "type", "bridge")
        _ip("addr", "add", f"{hosts.bridge_addr}/24", "dev", hosts.bridge)
        _ip("link", "set", hosts.bridge, "up")
        for i in range(1, count + 1):
            host, ns, veth, addr = f"w{i}", f"ild-{tag}-w{i}", f"ildv{tag}w{i}", f"{hosts.subnet}.{i + 1}"
            _ip("netns", "add", ns)
            hosts.ns[host] = ns
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            hosts.veth[host] = veth
            _ip("link", "set", veth, "master", hosts.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            hosts.addrs[host] = addr
        yield hosts
    finally:
        problems = _teardown(hosts)
        assert not problems, f"network namespaces left behind: {problems}"
