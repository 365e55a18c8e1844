"""The floor for kernel cost: an empty TC classifier attached the way mail-trace attaches (TCX,
ingress and egress). Two instructions loaded with the raw bpf(2) syscall, so the floor depends on
nothing of ours: `r0 = -1 (TC_ACT_UNSPEC, i.e. TCX_NEXT); exit`. Closing the link fds detaches."""
import ctypes
import os
import socket
import struct

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_LINK_CREATE = 28
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
NAME = "mt_floor"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd = _libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


class Floor:
    """Loads and attaches the empty program to `iface` (both directions); `close()` detaches."""

    def __init__(self, iface):
        insns = struct.pack("<BBhi", 0xB7, 0x00, 0, -1) + struct.pack("<BBhi", 0x95, 0, 0, 0)
        self._insns = ctypes.create_string_buffer(insns, len(insns))
        self._license = ctypes.create_string_buffer(b"GPL")
        attr = bytearray(128)
        struct.pack_into("<II", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(insns) // 8)
        struct.pack_into("<QQ", attr, 8, ctypes.addressof(self._insns), ctypes.addressof(self._license))
        attr[48:48 + len(NAME)] = NAME.encode()
        self.prog_fd = _bpf(BPF_PROG_LOAD, attr)
        ifindex = socket.if_nametoindex(iface)
        self.links = []
        for kind in (BPF_TCX_INGRESS, BPF_TCX_EGRESS):
            la = bytearray(128)
            struct.pack_into("<IIII", la, 0, self.prog_fd, ifindex, kind, 0)
            self.links.append(_bpf(BPF_LINK_CREATE, la))

    def close(self):
        for fd in self.links + [self.prog_fd]:
            os.close(fd)
        self.links = []
