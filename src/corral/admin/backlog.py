"""How many connections wait in a listening socket's accept queue, and how many the kernel will queue at most.

TCP (Linux): getsockopt(IPPROTO_TCP, TCP_INFO) on a socket in the LISTEN state fills two fields of
`struct tcp_info` (include/uapi/linux/tcp.h) with the accept queue instead of their usual meaning
(net/ipv4/tcp.c, tcp_get_info)::

    off  size  field          on a listening socket
      0     1  tcpi_state     TCP_LISTEN (10)
      1     7  six u8 fields and two bytes of bit fields
      8    16  tcpi_rto, tcpi_ato, tcpi_snd_mss, tcpi_rcv_mss (u32 each)
     24     4  tcpi_unacked   sk_ack_backlog: connections established and waiting for accept()
     28     4  tcpi_sacked    sk_max_ack_backlog: the backlog given to listen(), capped by net.core.somaxconn

Unix sockets have no TCP_INFO. The same two figures come from the sock_diag netlink interface (what
`ss -xl` shows as Recv-Q and Send-Q): a SOCK_DIAG_BY_FAMILY request for the socket's inode with
UDIAG_SHOW_RQLEN answers `struct unix_diag_rqlen` (udiag_rqueue: connections waiting, udiag_wqueue: the
backlog; include/uapi/linux/unix_diag.h, net/unix/diag.c).

Anything else (another OS, a TCP socket that is not listening, as the master's socket with reuse_port, or a
kernel without sock_diag) reads as None: unknown, never a made-up zero.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct

from corral.core.scoreboard import ListenQueue

__all__ = ["listen_queue"]

_TCP_LISTEN = 10
_TCP_INFO_SIZE = 104  # enough for every field up to tcpi_sacked on any kernel that has TCP_INFO
_TCP_INFO_QUEUE = struct.Struct("=B23xII")  # tcpi_state ... tcpi_unacked, tcpi_sacked at 24

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NO_COOKIE = 0xFFFF_FFFF
_NLMSGHDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")  # family, type, state, pad, ino, cookie[2]
_RTATTR = struct.Struct("=HH")  # rta_len, rta_type
_RQLEN = struct.Struct("=II")  # udiag_rqueue, udiag_wqueue
_sequence = itertools.count(1)


def listen_queue(sock: socket.socket) -> ListenQueue | None:
    """The accept queue of a listening TCP or unix stream socket, or None when it cannot be known."""
    try:
        if sock.fileno() < 0:
            return None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return _tcp_queue(sock)
        if sock.family == socket.AF_UNIX:
            return _unix_queue(os.fstat(sock.fileno()).st_ino)
    except (OSError, ValueError, struct.error):
        return None
    return None


def _tcp_queue(sock: socket.socket) -> ListenQueue | None:
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return None
    info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_SIZE)
    if len(info) < _TCP_INFO_QUEUE.size:
        return None
    state, depth, limit = _TCP_INFO_QUEUE.unpack_from(info)
    return ListenQueue(depth, limit) if state == _TCP_LISTEN else None


def _unix_queue(inode: int) -> ListenQueue | None:
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        return None
    seq = next(_sequence) & 0xFFFF_FFFF
    request = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 1 << _TCP_LISTEN, inode, _UDIAG_SHOW_RQLEN, _NO_COOKIE, _NO_COOKIE
    )
    message = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0) + request
    with socket.socket(family, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as netlink:
        netlink.setblocking(False)
        netlink.send(message)
        # The kernel answers a single-socket request while handling send(): the reply is already queued.
        with contextlib.suppress(BlockingIOError):
            return _parse_unix_reply(netlink.recv(8192), seq, inode)
    return None


def _parse_unix_reply(data: bytes, seq: int, inode: int) -> ListenQueue | None:
    """The queue figures in a sock_diag reply (one netlink message), or None if it is an error or another's."""
    if len(data) < _NLMSGHDR.size:
        return None
    length, kind, _, reply_seq, _ = _NLMSGHDR.unpack_from(data)
    if kind == _NLMSG_ERROR or kind != _SOCK_DIAG_BY_FAMILY or reply_seq != seq:
        return None
    end = min(length, len(data))
    at = _NLMSGHDR.size
    if end < at + _UNIX_DIAG_MSG.size or _UNIX_DIAG_MSG.unpack_from(data, at)[4] != inode:
        return None
    at += _UNIX_DIAG_MSG.size
    while at + _RTATTR.size <= end:
        attr_length, attr_type = _RTATTR.unpack_from(data, at)
        if attr_length < _RTATTR.size:
            return None
        if attr_type == _UNIX_DIAG_RQLEN and at + _RTATTR.size + _RQLEN.size <= end:
            depth, limit = _RQLEN.unpack_from(data, at + _RTATTR.size)
            return ListenQueue(depth, limit)
        at += (attr_length + 3) & ~3  # attributes are 4-byte aligned
    return None
