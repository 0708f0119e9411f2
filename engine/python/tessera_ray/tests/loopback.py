"""Which processes a test started, and where they listen (from /proc)."""

import os
import socket
import struct


def descendants(root: int) -> list:
    """Every live process below `root`."""
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces: fields follow its closing paren.
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        parent[int(d)] = int(fields[1])
    out, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def _listening_inodes():
    """{socket inode: (host, port)} of every TCP socket in LISTEN."""
    out = {}
    for name, fam in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] != "0A":  # LISTEN
                continue
            hexaddr, hexport = cols[1].split(":")
            raw = bytes.fromhex(hexaddr)
            if fam == socket.AF_INET:
                host = socket.inet_ntop(fam, struct.pack("<I", struct.unpack(">I", raw)[0]))
            else:
                words = struct.unpack(">4I", raw)
                host = socket.inet_ntop(fam, struct.pack("<4I", *words))
                if host.startswith("::ffff:"):
                    host = host[len("::ffff:"):]
            out[int(cols[9])] = (host, int(hexport, 16))
    return out


def listeners(pids) -> list:
    """(pid, host, port) of every listening TCP socket the processes hold."""
    inodes = _listening_inodes()
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in inodes:
                    out.append((pid, *inodes[inode]))
    return out
