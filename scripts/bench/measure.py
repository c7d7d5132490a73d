#!/usr/bin/env python3
"""Time one DHCP client run from process start to its IPv4 address, and its memory.

Runs as root from the host network namespace. It:

1. opens a taskstats generic-netlink socket (only possible in the initial
   network namespace) so that every process that exits reports its peak RSS
   (`hiwater_rss`, the same counter as VmHWM) the moment it exits, including
   short-lived helpers such as a client's address script;
2. enters the client's network namespace (setns) and a private mount namespace
   (like `ip netns exec`, so per-run tmpfs mounts never reach the host);
3. subscribes to rtnetlink RTMGRP_IPV4_IFADDR *before* starting the client;
4. becomes a child subreaper, so daemonised children stay in its process tree;
5. starts the client and timestamps the first RTM_NEWADDR for the interface
   with an address inside the expected prefix (CLOCK_MONOTONIC both ends);
6. lets the client settle, terminates its whole tree (SIGTERM, then SIGKILL
   after a bounded wait) and sums the per-process peak RSS.

Prints one JSON object on stdout. Exit status 0 when the run got an address,
1 when the client failed (timeout, early exit), 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

# --- constants from the kernel's uapi headers (stable ABI) ---------------
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTMGRP_IPV4_IFADDR = 0x10
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_HDR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

GENL_HDR = struct.Struct("=BBH")
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
TASKSTATS_CMD_GET, TASKSTATS_CMD_NEW = 1, 2
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_TYPE_PID, TASKSTATS_TYPE_STATS, TASKSTATS_TYPE_AGGR_PID = 1, 3, 4
# Offsets inside struct taskstats (linux/taskstats.h); fields are only ever
# appended, so these hold for every version that has them.
TS_VERSION_OFF = 0
TS_COMM_OFF, TS_COMM_LEN = 80, 32
TS_PID_OFF, TS_PPID_OFF = 128, 132
TS_HIWATER_OFF = 200  # KiB
TS_TGID_OFF, TS_TGID_SINCE = 368, 12  # ac_tgid exists from version 12 on

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_SLAVE = 0x2, 0x4, 0x4000, 0x80000
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
SO_RCVBUFFORCE = 33


class SetupError(Exception):
    """The measurement could not be set up (not the client's fault)."""


def align4(n: int) -> int:
    return (n + 3) & ~3


def iter_attrs(buf: bytes, off: int = 0, end: int | None = None):
    """Yields (type, payload) of the netlink attributes in buf[off:end].

    Stops at the first malformed header instead of raising: the kernel is
    trusted, but a truncated datagram must not crash a benchmark run.
    """
    end = len(buf) if end is None else min(end, len(buf))
    while off + RTA_HDR.size <= end:
        length, kind = RTA_HDR.unpack_from(buf, off)
        if length < RTA_HDR.size or off + length > end:
            return
        yield kind & NLA_TYPE_MASK, buf[off + RTA_HDR.size : off + length]
        off += align4(length)


def iter_messages(buf: bytes):
    """Yields (type, flags, payload) for each netlink message in a datagram."""
    off = 0
    while off + NLMSG_HDR.size <= len(buf):
        length, kind, flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDR.size or off + length > len(buf):
            return
        yield kind, flags, buf[off + NLMSG_HDR.size : off + length]
        off += align4(length)


def parse_newaddr(payload: bytes):
    """Returns (ifindex, IPv4Interface) for an AF_INET RTM_NEWADDR, else None."""
    if len(payload) < IFADDRMSG.size:
        return None
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    if family != socket.AF_INET or prefixlen > 32:
        return None
    found = {}
    for kind, value in iter_attrs(payload, IFADDRMSG.size):
        if kind in (IFA_ADDRESS, IFA_LOCAL) and len(value) == 4:
            found[kind] = value
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    # point-to-point links and equal to IFA_LOCAL otherwise.
    raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if raw is None:
        return None
    return index, ipaddress.IPv4Interface((socket.inet_ntoa(raw), prefixlen))


def parse_taskstats(payload: bytes):
    """Returns a list of exit records from one TASKSTATS_CMD_NEW message.

    Each record is a dict: tid, tgid, ppid, hiwater_kib, comm.
    """
    if len(payload) < GENL_HDR.size:
        return []
    cmd, _version, _reserved = GENL_HDR.unpack_from(payload)
    if cmd != TASKSTATS_CMD_NEW:
        return []
    records = []
    for kind, nested in iter_attrs(payload, GENL_HDR.size):
        if kind != TASKSTATS_TYPE_AGGR_PID:
            continue
        stats = None
        for inner_kind, value in iter_attrs(nested):
            if inner_kind == TASKSTATS_TYPE_STATS:
                stats = value
        if stats is None or len(stats) < TS_HIWATER_OFF + 8:
            continue
        (version,) = struct.unpack_from("=H", stats, TS_VERSION_OFF)
        tid, ppid = struct.unpack_from("=II", stats, TS_PID_OFF)
        (hiwater,) = struct.unpack_from("=Q", stats, TS_HIWATER_OFF)
        tgid = tid
        if version >= TS_TGID_SINCE and len(stats) >= TS_TGID_OFF + 4:
            (tgid,) = struct.unpack_from("=I", stats, TS_TGID_OFF)
            tgid = tgid or tid
        comm = stats[TS_COMM_OFF : TS_COMM_OFF + TS_COMM_LEN].split(b"\0", 1)[0]
        records.append(
            {
                "tid": tid,
                "tgid": tgid,
                "ppid": ppid,
                "hiwater_kib": hiwater,
                "comm": comm.decode("ascii", "replace"),
            }
        )
    return records


def tree_members(root: int, parent_of: dict[int, int]) -> set[int]:
    """The pids whose parent chain in parent_of reaches root (root excluded)."""
    members: set[int] = set()
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent_of.items():
            if pid not in members and pid != root and (ppid == root or ppid in members):
                members.add(pid)
                changed = True
    return members


def sum_peak_rss(root: int, parent_of: dict[int, int], peak_of: dict[int, int]) -> tuple[int, int]:
    """(total KiB, process count) over root's descendants."""
    members = tree_members(root, parent_of)
    return sum(peak_of.get(pid, 0) for pid in members), len(members)


# --- system calls Python 3.11 does not wrap ------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def enter_namespaces(netns: str, tmpfs_dirs: list[str]) -> None:
    """Joins the named network namespace and a private mount namespace."""
    path = os.path.join("/run/netns", netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"open {path}: {e.strerror}") from None
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {netns}")
    finally:
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Slave propagation: host mounts still reach us, ours never reach the host.
    _check(_libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / rslave")
    # A sysfs of the new namespace, so /sys/class/net shows its links (what
    # `ip netns exec` does too).
    if _libc.umount2(b"/sys", MNT_DETACH) == 0:
        _check(_libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs")
    for d in tmpfs_dirs:
        if not os.path.isdir(d):
            raise SetupError(f"tmpfs target {d} is not a directory")
        _check(
            _libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"),
            f"mount tmpfs on {d}",
        )


def set_subreaper() -> None:
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


# --- netlink sockets ------------------------------------------------------
def nl_request(sock: socket.socket, kind: int, flags: int, payload: bytes, seq: int) -> None:
    sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), kind, flags, seq, 0) + payload)


def nl_attr(kind: int, value: bytes) -> bytes:
    raw = RTA_HDR.pack(RTA_HDR.size + len(value), kind) + value
    return raw + b"\0" * (align4(len(raw)) - len(raw))


def nl_ack(sock: socket.socket, what: str) -> bytes:
    """Reads replies to one request; returns the first non-error payload."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data = sock.recv(65536)
        for kind, _flags, payload in iter_messages(data):
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", payload) if len(payload) >= 4 else (-errno.EIO,)
                if code != 0:
                    raise SetupError(f"{what}: {os.strerror(-code)}")
                return b""
            return payload
    raise SetupError(f"{what}: no answer from the kernel")


def possible_cpus() -> str:
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        return f.read().strip()


def in_initial_pid_namespace() -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return len(line.split()) == 2
    return True  # kernels without NSpid have no nested pid namespaces in use


def open_taskstats() -> socket.socket:
    """A socket that receives a record for every task exiting on any CPU."""
    if not in_initial_pid_namespace():
        # Exit records carry pids of the initial pid namespace.
        raise SetupError("not in the initial pid namespace")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 16)  # NETLINK_GENERIC
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    body = GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + nl_attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")
    nl_request(sock, GENL_ID_CTRL, NLM_F_REQUEST, body, 1)
    reply = nl_ack(sock, "resolve TASKSTATS family")
    family = None
    for kind, value in iter_attrs(reply, GENL_HDR.size):
        if kind == CTRL_ATTR_FAMILY_ID and len(value) >= 2:
            (family,) = struct.unpack_from("=H", value)
    if family is None:
        raise SetupError("TASKSTATS family has no id")
    mask = possible_cpus().encode() + b"\0"
    body = GENL_HDR.pack(TASKSTATS_CMD_GET, 1, 0) + nl_attr(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, mask)
    nl_request(sock, family, NLM_F_REQUEST | NLM_F_ACK, body, 2)
    nl_ack(sock, "register taskstats listener")
    return sock


def open_addr_monitor() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, RTMGRP_IPV4_IFADDR))
    return sock


def dump_ipv4_addresses() -> list[tuple[int, ipaddress.IPv4Interface]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.bind((0, 0))
        nl_request(s, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0), 1)
        found = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for kind, _flags, payload in iter_messages(s.recv(65536)):
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    raise SetupError("address dump refused")
                if kind == RTM_NEWADDR:
                    parsed = parse_newaddr(payload)
                    if parsed:
                        found.append(parsed)
        raise SetupError("address dump did not finish")


# --- the process tree -----------------------------------------------------
def descendants(root: int) -> dict[int, int]:
    """pid -> ppid for every live descendant of root (via /proc/*/children)."""
    result: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            for kid in kids:
                if kid not in result:
                    result[kid] = pid
                    todo.append(kid)
    return result


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0  # kernel threads and zombies have no VmHWM line


class Run:
    """State of one measured client run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.me = os.getpid()
        self.prefix = ipaddress.IPv4Network(args.prefix, strict=False)
        self.parent_of: dict[int, int] = {}
        self.peak_of: dict[int, int] = {}
        self.comm_of: dict[int, str] = {}
        self.taskstats: socket.socket | None = None
        self.taskstats_lost = False
        self.proc: subprocess.Popen | None = None
        self.exit_status: int | None = None

    # Memory bookkeeping: taskstats for exits, /proc for the living.
    def note(self, pid: int, ppid: int, kib: int, comm: str = "") -> None:
        if ppid:
            self.parent_of.setdefault(pid, ppid)
        self.peak_of[pid] = max(self.peak_of.get(pid, 0), kib)
        if comm:
            self.comm_of.setdefault(pid, comm)

    def sample_proc(self) -> None:
        for pid, ppid in descendants(self.me).items():
            kib = vm_hwm_kib(pid)
            if kib is not None:
                self.note(pid, ppid, kib)

    def drain_taskstats(self) -> None:
        if self.taskstats is None:
            return
        while True:
            try:
                data = self.taskstats.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # records were dropped: fall back to /proc samples
                    self.taskstats_lost = True
                    continue
                raise
            for _kind, _flags, payload in iter_messages(data):
                for rec in parse_taskstats(payload):
                    # Threads report their own tid; their memory is the group's.
                    if rec["tid"] == rec["tgid"]:
                        self.note(rec["tgid"], rec["ppid"], rec["hiwater_kib"], rec["comm"])
                    else:
                        self.note(rec["tgid"], 0, rec["hiwater_kib"])

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.proc is not None and pid == self.proc.pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.exit_status

    def kill_tree(self, grace: float) -> None:
        """SIGTERM every descendant, SIGKILL whatever is left after grace seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            live = descendants(self.me)
            if not live:
                break
            self.sample_proc()  # last VmHWM of the living, in case taskstats is unavailable
            for pid in live:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.reap()
                self.drain_taskstats()
                if not descendants(self.me):
                    break
                time.sleep(0.005)
        self.reap()

    def run(self) -> dict:
        args = self.args
        result: dict = {"ok": False, "ms": None, "addr": None, "error": None}
        try:
            self.taskstats = open_taskstats()
            result["rss_source"] = "taskstats"
        except (SetupError, OSError) as e:
            self.taskstats = None
            result["rss_source"] = f"proc-sampling ({e})"
        enter_namespaces(args.netns, args.tmpfs)
        try:
            ifindex = socket.if_nametoindex(args.ifname)
        except OSError:
            raise SetupError(f"no interface {args.ifname} in {args.netns}") from None
        if any(i == ifindex and a.ip in self.prefix for i, a in dump_ipv4_addresses()):
            raise SetupError(f"{args.ifname} already has an address in {self.prefix}")
        monitor = open_addr_monitor()  # subscribed before the client exists
        set_subreaper()
        log = open(args.log, "ab") if args.log else subprocess.DEVNULL
        watch = [monitor] + ([self.taskstats] if self.taskstats else [])
        t0 = time.monotonic_ns()
        try:
            self.proc = subprocess.Popen(
                args.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=args.cwd
            )
        except OSError as e:
            raise SetupError(f"cannot start {args.command[0]}: {e.strerror}") from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = t0 + int(args.timeout * 1e9)
        t_addr = None
        # Without taskstats, /proc is sampled while waiting; this costs CPU,
        # so it is done only when there is no better source.
        poll = 0.01 if self.taskstats is None else 0.25
        while t_addr is None:
            now = time.monotonic_ns()
            if now >= deadline:
                result["error"] = f"no address in {self.prefix} after {args.timeout:g} s"
                break
            ready, _, _ = select.select(watch, [], [], min(poll, (deadline - now) / 1e9))
            stamp = time.monotonic_ns()
            if monitor in ready:
                for kind, _flags, payload in iter_messages(monitor.recv(1 << 16)):
                    parsed = parse_newaddr(payload) if kind == RTM_NEWADDR else None
                    if parsed and parsed[0] == ifindex and parsed[1].ip in self.prefix:
                        t_addr, result["addr"] = stamp, str(parsed[1])
                        break
            self.drain_taskstats()
            if self.taskstats is None:
                self.sample_proc()
            self.reap()
            if t_addr is None and self.exit_status is not None:
                result["error"] = f"client exited with status {self.exit_status} before an address"
                break
        if t_addr is not None:
            result["ok"] = True
            result["ms"] = round((t_addr - t0) / 1e6, 3)
            # Let post-lease work (announcements, state files, scripts) run
            # and count towards memory, then stop the client.
            settle_end = time.monotonic() + args.settle_ms / 1000
            while time.monotonic() < settle_end:
                time.sleep(min(0.02, max(0.0, settle_end - time.monotonic())))
                self.drain_taskstats()
                self.reap()
            if self.exit_status is not None and self.exit_status != 0 and not args.may_exit:
                result["ok"] = False
                result["error"] = f"client exited with status {self.exit_status} after the address"
        self.sample_proc()
        self.kill_tree(args.grace)
        leftovers = descendants(self.me)
        # Exit records can trail the reaping slightly.
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            self.drain_taskstats()
            time.sleep(0.02)
        total, count = sum_peak_rss(self.me, self.parent_of, self.peak_of)
        members = tree_members(self.me, self.parent_of)
        result["rss_kib"] = total
        result["procs"] = count
        result["comms"] = sorted({self.comm_of.get(p, "?") for p in members})
        # Per process (by pid, so mostly in start order): which helper costs what.
        result["breakdown"] = [f"{self.comm_of.get(p, '?')}:{self.peak_of.get(p, 0)}" for p in sorted(members)]
        if self.taskstats_lost:
            result["rss_source"] += " (some records lost; /proc samples used)"
        if leftovers:
            result["ok"] = False
            result["error"] = f"processes survived SIGKILL: {sorted(leftovers)}"
        return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--netns", required=True, help="client network namespace (ip netns name)")
    p.add_argument("--ifname", required=True, help="interface the address must appear on")
    p.add_argument("--prefix", required=True, help="the address must lie in this IPv4 prefix")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the address")
    p.add_argument("--settle-ms", type=int, default=500, help="time the client keeps running after it")
    p.add_argument("--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--tmpfs", action="append", default=[], help="mount a private tmpfs on this directory")
    p.add_argument("--log", help="append the client's output to this file")
    p.add_argument("--cwd", help="working directory of the client")
    p.add_argument("--may-exit", action="store_true", help="the client may exit 0 after the lease")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("give the client command after --")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    run = Run(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        result = run.run()
    except SetupError as e:
        run.kill_tree(0.5)
        print(json.dumps({"ok": False, "setup_error": str(e), "error": str(e)}))
        return 2
    except KeyboardInterrupt:
        run.kill_tree(0.5)
        print(json.dumps({"ok": False, "error": "interrupted"}))
        return 130
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
