"""Classic BPF socket filters: a small assembler and the SPI-steering filter.

Why classic BPF and not PACKET_FANOUT: each worker owns one AF_PACKET socket
on the outside interface, and a filter on that socket accepts only the ESP
and AH whose SPI satisfies ``spi % n_workers == k``.  Which worker gets an SA then
depends only on (spi, n, k), not on the order in which sockets joined a fanout
group, so a restarted worker gets exactly its SAs back and the anti-replay
window of each inbound SA lives in one process.  Re-attaching a filter with
SO_ATTACH_FILTER swaps the program atomically (the kernel publishes the new
one with RCU), which is how a change in the number of workers is applied.

The programs run on packet sockets of type SOCK_DGRAM, so offset 0 is the
network header (the kernel has pulled the link-layer header off before it
runs the filter).  The link-layer protocol comes from the ancillary load
``SKF_AD_PROTOCOL`` so one socket bound to ETH_P_ALL handles IPv4 and IPv6.

A load beyond the end of the packet ends the program with "drop", which the
filter relies on: a 1-byte NAT keepalive on 4500 has no 4-byte marker to load.
Bare ESP or AH too short to hold an SPI is checked for first and, like fragments,
goes to one designated worker, which counts it (``malformed``): no
worker could be chosen by its SPI, and a drop nobody counts is a blind spot.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# linux/bpf_common.h, linux/filter.h
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR = 0x60, 0x70, 0x80, 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X = 0x00, 0x08
BPF_A = 0x10  # ret A
BPF_TAX, BPF_TXA = 0x00, 0x80
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0  # ntohs(skb->protocol): the ethertype, also on SOCK_DGRAM sockets
BPF_MAXINSNS = 4096

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_LOCK_FILTER = 44

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_FRAGMENT = 44
NAT_T_PORT = 4500  # RFC 3948 §2
ACCEPT_ALL = 0xFFFFFFFF  # "keep this many bytes": the whole packet

_INSN = struct.Struct("=HBBI")  # struct sock_filter, native order as the kernel reads it
_FPROG = struct.Struct("@HP")  # struct sock_fprog: len, pointer (padding as the C ABI has it)


@dataclass(frozen=True)
class Insn:
    """One instruction; ``jt``/``jf`` (conditional jumps) and ``k`` (BPF_JA) may be labels."""

    code: int
    jt: int | str = 0
    jf: int | str = 0
    k: int | str = 0


Program = Sequence["Insn | str"]  # an ``str`` item defines a label at that point


def ld(size: int, off: int) -> Insn:
    """A = packet[off] (size BPF_W/BPF_H/BPF_B, big-endian)."""
    return Insn(BPF_LD | size | BPF_ABS, k=off)


def ld_ind(size: int, off: int) -> Insn:
    """A = packet[X + off]."""
    return Insn(BPF_LD | size | BPF_IND, k=off)


def ld_protocol() -> Insn:
    """A = the link-layer protocol (ethertype) of the packet."""
    return Insn(BPF_LD | BPF_W | BPF_ABS, k=(SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF)


def ld_len() -> Insn:
    """A = the packet's length."""
    return Insn(BPF_LD | BPF_W | BPF_LEN)


def sub_x() -> Insn:
    """A = A - X."""
    return Insn(BPF_ALU | BPF_SUB | BPF_X)


def ldx_ihl(off: int = 0) -> Insn:
    """X = 4 * (packet[off] & 0xf): the IPv4 header length."""
    return Insn(BPF_LDX | BPF_B | BPF_MSH, k=off)


def alu(op: int, k: int) -> Insn:
    """A = A op k."""
    return Insn(BPF_ALU | op | BPF_K, k=k)


def jmp(op: int, k: int, jt: int | str, jf: int | str) -> Insn:
    """if A op k goto jt else goto jf (labels or relative offsets)."""
    return Insn(BPF_JMP | op | BPF_K, jt, jf, k)


def ja(label: str) -> Insn:
    """goto label."""
    return Insn(BPF_JMP | BPF_JA, k=label)


def ret(k: int) -> Insn:
    """Return k: 0 drops, anything else keeps that many bytes."""
    return Insn(BPF_RET | BPF_K, k=k)


def assemble(program: Program) -> list[tuple[int, int, int, int]]:
    """Resolve labels into the (code, jt, jf, k) tuples the kernel takes."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            if item in labels:
                raise ValueError(f"label {item!r} defined twice")
            labels[item] = len(insns)
        else:
            insns.append(item)
    if not 0 < len(insns) <= BPF_MAXINSNS:
        raise ValueError(f"program has {len(insns)} instructions")

    def rel(target: int | str, pc: int, limit: int) -> int:
        if isinstance(target, int):
            return target
        if target not in labels:
            raise ValueError(f"undefined label {target!r}")
        offset = labels[target] - pc - 1  # jumps are relative to the next instruction
        if not 0 <= offset <= limit:
            raise ValueError(f"jump to {target!r} out of range ({offset})")
        return offset

    out = []
    for pc, insn in enumerate(insns):
        if insn.code & 0x07 == BPF_JMP and insn.code & 0xF0 == BPF_JA:
            out.append((insn.code, 0, 0, rel(insn.k, pc, 0xFFFFFFFF)))
        elif insn.code & 0x07 == BPF_JMP:
            assert isinstance(insn.k, int)
            out.append((insn.code, rel(insn.jt, pc, 255), rel(insn.jf, pc, 255), insn.k))
        else:
            assert isinstance(insn.k, int)
            out.append((insn.code, 0, 0, insn.k))
    return out


def pack(program: Program) -> bytes:
    """The program as the array of ``struct sock_filter`` the kernel copies in."""
    return b"".join(_INSN.pack(*t) for t in assemble(program))


def attach(sock: socket.socket, code: bytes) -> None:
    """Attach (or atomically replace) the socket's filter with packed ``code``."""
    if not code or len(code) % _INSN.size:
        raise ValueError("not a packed classic BPF program")
    buf = ctypes.create_string_buffer(code, len(code))
    # The kernel copies the program during setsockopt, so ``buf`` only has to
    # live until the call returns.
    fprog = _FPROG.pack(len(code) // _INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def detach(sock: socket.socket) -> None:
    """Remove the socket's filter (everything the socket is bound to passes again)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)


DROP_ALL: Program = (ret(0),)


def spi_steering(n_workers: int, k: int, *, nat_t_port: int | None = NAT_T_PORT,
                 raw_esp: bool = True, fragments_to: int | None = 0,
                 udp_fragments: bool = True, runts_to: int | None = 0,
                 ah: bool = True) -> Program:
    """The filter of worker ``k`` of ``n_workers``: ESP and AH whose ``spi % n_workers == k``.

    Accepted, from a network header at offset 0 (SOCK_DGRAM packet socket):

    * raw ESP (``raw_esp``): IPv4 protocol 50, IPv6 next header 50 directly
      after the fixed header (no extension headers);
    * AH (``ah``, RFC 4302): IPv4 protocol 51, IPv6 next header 51 directly
      after the fixed header; the SPI is the second word of AH (§2).  AH and
      ESP SPIs are separate spaces, but both steer by ``spi % n_workers``:
      all an SA's packets, and so its replay window, stay in one worker;
    * ESP in UDP (``nat_t_port`` not None, RFC 3948): UDP to that port whose
      first 4 payload bytes (the SPI) are not zero.  A zero marker is IKE
      (RFC 3948 §2.2) and a 1-byte 0xFF is a NAT keepalive (§2.3): those stay
      with the kernel and the IKE socket;
    * bare ESP or AH shorter than an SPI, when ``runts_to`` == ``k`` (to be
      counted, by exactly one worker: module doc);
    * fragments (``fragments_to`` == ``k``): the SPI is in the first fragment
      only, so a worker cannot tell from a later fragment whose it is.  The
      daemon's workers each pass their own index, so every worker takes every
      fragment that may belong to ESP, and the first fragment's SPI decides
      which one keeps the datagram (:mod:`workers.reassembly`); a filter
      built with one fixed index sends them all to that worker instead.
      IPv4: ESP fragments, AH fragments (``ah``), first UDP fragments to
      the NAT-T port, and (``udp_fragments``) non-first UDP fragments, which
      carry no port and so may include unrelated UDP (the worker drops those
      after reassembly; the kernel reassembles and delivers them anyway).
      IPv6: the fragment header names the upper protocol in every fragment.
      AH, like ESP, is verified over the reassembled datagram (RFC 4302
      §3.4.1): a transport-mode peer (ipsecd too) fragments its AH packets
      after AH processing (§3.3.4).

    Everything else (including IPv4 with options is fine: the header length
    is computed) is dropped by this socket; the kernel stack is unaffected.
    """
    if n_workers < 1 or not 0 <= k < n_workers:
        raise ValueError(f"worker {k} of {n_workers}")
    if not raw_esp and nat_t_port is None:
        raise ValueError("neither raw ESP nor ESP in UDP: the filter would accept nothing")
    take_fragments = fragments_to == k
    p: list[Insn | str] = []
    p += [ld_protocol(),
          jmp(BPF_JEQ, ETH_P_IP, "v4", 0),
          jmp(BPF_JEQ, ETH_P_IPV6, "v6", "drop")]

    # IPv4 (RFC 791)
    p += ["v4",
          ld(BPF_B, 0), alu(BPF_AND, 0xF0), jmp(BPF_JEQ, 0x40, 0, "drop"),
          ld(BPF_H, 6), jmp(BPF_JSET, 0x3FFF, "v4frag", 0),  # MF or fragment offset
          ld(BPF_B, 9)]
    if raw_esp:
        p += [jmp(BPF_JEQ, IPPROTO_ESP, "v4esp", 0)]
    if ah:
        p += [jmp(BPF_JEQ, IPPROTO_AH, "v4ah", 0)]
    if nat_t_port is not None:
        p += [jmp(BPF_JEQ, IPPROTO_UDP, "v4udp", "drop")]
    p += [ret(0)]
    if raw_esp:
        p += ["v4esp", ldx_ihl(), ld_len(), sub_x(), jmp(BPF_JGE, 4, 0, "runt"),
              ld_ind(BPF_W, 0), ja("spi")]
    if ah:  # RFC 4302 §2: next header, payload length, reserved, then the SPI
        p += ["v4ah", ldx_ihl(), ld_len(), sub_x(), jmp(BPF_JGE, 8, 0, "runt"),
              ld_ind(BPF_W, 4), ja("spi")]
    if nat_t_port is not None:
        p += ["v4udp", ldx_ihl(), ld_ind(BPF_H, 2), jmp(BPF_JEQ, nat_t_port, 0, "drop"),
              ld_ind(BPF_W, 8), jmp(BPF_JEQ, 0, "drop", "spi")]
    p += ["v4frag"]
    if take_fragments:
        p += [ld(BPF_B, 9)]
        if raw_esp:
            p += [jmp(BPF_JEQ, IPPROTO_ESP, "accept", 0)]
        if ah:
            p += [jmp(BPF_JEQ, IPPROTO_AH, "accept", 0)]
        if nat_t_port is not None:
            p += [jmp(BPF_JEQ, IPPROTO_UDP, 0, "drop"),
                  ld(BPF_H, 6), jmp(BPF_JSET, 0x1FFF,
                                    "accept" if udp_fragments else "drop", 0),
                  ldx_ihl(), ld_ind(BPF_H, 2), jmp(BPF_JEQ, nat_t_port, "accept", "drop")]
    p += [ret(0)]

    # IPv6 (RFC 8200): fixed 40-byte header, next header at 6
    p += ["v6",
          ld(BPF_B, 0), alu(BPF_AND, 0xF0), jmp(BPF_JEQ, 0x60, 0, "drop"),
          ld(BPF_B, 6)]
    if raw_esp:
        p += [jmp(BPF_JEQ, IPPROTO_ESP, "v6esp", 0)]
    if ah:
        p += [jmp(BPF_JEQ, IPPROTO_AH, "v6ah", 0)]
    if nat_t_port is not None:
        p += [jmp(BPF_JEQ, IPPROTO_UDP, "v6udp", 0)]
    p += [jmp(BPF_JEQ, IPPROTO_FRAGMENT, "v6frag", "drop")]
    if raw_esp:
        p += ["v6esp", ld_len(), jmp(BPF_JGE, 44, 0, "runt"), ld(BPF_W, 40), ja("spi")]
    if ah:
        p += ["v6ah", ld_len(), jmp(BPF_JGE, 48, 0, "runt"), ld(BPF_W, 44), ja("spi")]
    if nat_t_port is not None:
        p += ["v6udp", ld(BPF_H, 42), jmp(BPF_JEQ, nat_t_port, 0, "drop"),
              ld(BPF_W, 48), jmp(BPF_JEQ, 0, "drop", "spi")]
    p += ["v6frag"]
    if take_fragments:
        # RFC 8200 §4.5: next header (40), reserved, offset<<3|M (42), id (44)
        p += [ld(BPF_B, 40)]
        if raw_esp:
            p += [jmp(BPF_JEQ, IPPROTO_ESP, "accept", 0)]
        if ah:
            p += [jmp(BPF_JEQ, IPPROTO_AH, "accept", 0)]
        if nat_t_port is not None:
            p += [jmp(BPF_JEQ, IPPROTO_UDP, 0, "drop"),
                  ld(BPF_H, 42), jmp(BPF_JSET, 0xFFF8, "accept", 0),
                  ld(BPF_H, 50), jmp(BPF_JEQ, nat_t_port, "accept", "drop")]
    p += [ret(0)]

    # A holds the SPI (RFC 4303 §2.1).  BPF_MOD exists in classic BPF since
    # Linux 3.7; the kernel rejects a modulus of 0 at attach time.
    p += ["spi"]
    if n_workers > 1:
        p += [alu(BPF_MOD, n_workers), jmp(BPF_JEQ, k, "accept", "drop")]
    if raw_esp or ah:
        p += ["runt", ret(ACCEPT_ALL if runts_to == k else 0)]
    p += ["accept", ret(ACCEPT_ALL), "drop", ret(0)]
    return p
