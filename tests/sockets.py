"""The TCP sockets the processes of one session listen on, read from /proc (Linux): what a study's own Ray
exposes to the network."""

from __future__ import annotations

import os
import socket
import struct


def _listening_inodes(path: str, v6: bool) -> dict[str, tuple[str, int]]:
    try:
        lines = open(path).read().splitlines()[1:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        parts = line.split()
        if parts[3] != "0A":  # TCP_LISTEN
            continue
        ip_hex, port_hex = parts[1].split(":")
        raw = bytes.fromhex(ip_hex)
        if v6:
            ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        else:
            ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
        out[parts[9]] = (ip, int(port_hex, 16))
    return out


def listening(session: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening socket a process of `session` holds."""
    table = {**_listening_inodes("/proc/net/tcp", False), **_listening_inodes("/proc/net/tcp6", True)}
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != session:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in table:
                    found.add((*table[link[8:-1]], open(f"/proc/{pid}/comm").read().strip()))
        except (OSError, ProcessLookupError):
            continue
    return found
