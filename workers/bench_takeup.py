"""Microbenchmark: what a worker spends taking up the SAs that IKE installs.

    .venv/bin/python -m workers.bench_takeup [--children 1000,3000] [--batch 45] [--runs 3]

The control side installs tunnel-mode Child SAs as IKE does (one inbound and
one outbound AES-GCM-128 SA per child, with its ``out``, ``in`` and ``fwd``
policies, into an SA table of ``2 * children + 64`` slots, ``batch`` children
per publication of the policy table as a delta); after each batch a worker
(:meth:`workers.worker.Worker.tables_only`, in a process of its own, as in the
daemon) runs its refresh, which is timed in CPU time.  Printed per SA: the
median over the runs, the first and the last quarter of the run (cost that
grows with the number of SAs shows as a last quarter above the first), the
part the cyclic garbage collector took, and the worker's tracked objects at
the end.  ``--workers N``: the timed worker is one of N, which takes up every
outbound SA and the inbound SAs whose SPI steers to it.  Needs /dev/shm, no root.  Figures vary by 10-20 % from run to run
on a shared 2-core VM.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import statistics
import sys
import time
from typing import Any, NoReturn

from ipsecd.iana import EncrId, IntegId, IpProto
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.satable import Direction as SlotDirection
from ipsecd.satable import SATable
from ipsecd.spd import SPD, Action, Direction, IpsecRequest, Level, Policy, Selector
from workers.policy import InstalledSA, PolicyPublisher, PolicyTable, SlotInfo
from workers.worker import Worker, WorkerSpec

LOCAL = ipaddress.IPv4Address("198.18.0.1")
PROTECTED = ipaddress.IPv4Network("198.18.16.0/20")
PEERS = int(ipaddress.IPv4Address("198.18.128.0"))  # child k's peer: PEERS + k
INNER = int(ipaddress.IPv4Address("198.19.0.0"))  # child k's remote TS: one /32


def _worker(spec: WorkerSpec, go: int, done: int) -> NoReturn:
    """The worker's process: a refresh per byte read from ``go``, then its figures."""
    worker = Worker.tables_only(spec)
    gc.collect()
    gc.freeze()  # what the worker inherits, as workers.worker.main does
    gc_ns = [0, 0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_ns[1] = time.thread_time_ns()
        else:
            gc_ns[0] += time.thread_time_ns() - gc_ns[1]

    gc.callbacks.append(on_gc)
    times: list[int] = []
    while os.read(go, 1) == b"g":
        t0 = time.thread_time_ns()
        worker._refresh()
        times.append(time.thread_time_ns() - t0)
        os.write(done, b"k")
    gc.callbacks.remove(on_gc)
    result = {"times": times[1:], "gc_ns": gc_ns[0], "objects": len(gc.get_objects()),
              "outbound": len(worker.outbound), "inbound": len(worker.inbound),
              "rules": worker.policies.count()}
    os.write(done, json.dumps(result).encode())
    # Gone without tearing the worker down: its replay windows are views of the table's
    # segment, which could not be closed under them (it is the parent's to remove).
    os._exit(0)


def run(children: int, batch: int, workers: int = 1) -> dict[str, float]:
    """One run: ``children`` children in batches, timed in worker 0 of ``workers``; per-SA
    figures in microseconds."""
    tag = f"ipsecd-takeup-{os.getpid()}"
    table = SATable.create(f"{tag}-sa", 2 * children + 64, 1)
    policy = PolicyTable(f"{tag}-policy")
    try:
        spec = WorkerSpec(index=0, count=workers, table=table.name, policy=policy.name, tun="",
                          outside=(), mark=0)
        publisher = PolicyPublisher(policy)
        spd = SPD()
        outbound: dict[int, InstalledSA] = {}
        slot_info: dict[int, SlotInfo] = {}
        publisher.publish(spd, outbound, [LOCAL], slot_info)
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(go_w)
                os.close(done_r)
                _worker(spec, go_r, done_w)
            finally:
                os._exit(0)
        os.close(go_r)
        os.close(done_w)

        def refresh() -> None:
            os.write(go_w, b"g")
            os.read(done_r, 1)

        refresh()
        spd.take_changes()
        slot = order = 0
        for first in range(0, children, batch):
            dirty = []
            for k in range(first, min(children, first + batch)):
                peer = ipaddress.IPv4Address(PEERS + k)
                inner = ipaddress.IPv4Network(INNER + k)
                for direction, src, dst, spi in ((SlotDirection.IN, peer, LOCAL, 0xC000_0000 + k),
                                                 (SlotDirection.OUT, LOCAL, peer, 0x8000_0000 + k)):
                    sa = SecurityAssociation(
                        spi=spi, protocol=IpProto.ESP, src=src, dst=dst, mode=Mode.TUNNEL,
                        reqid=k + 1, enc=EncrId.ENCR_AES_GCM_16, auth=IntegId.NONE,
                        enc_key=bytearray(os.urandom(20)))
                    slot = table.free_slot(start=slot)
                    table.install(slot, sa, direction)
                    if direction is SlotDirection.OUT:
                        order += 1
                        outbound[slot] = InstalledSA(sa, slot, order)
                        slot_info[slot] = SlotInfo(1500, "eth0")
                        dirty.append(slot)
                    slot += 1
                out = IpsecRequest(IpProto.ESP, Mode.TUNNEL, LOCAL, peer, Level.UNIQUE, k + 1)
                back = IpsecRequest(IpProto.ESP, Mode.TUNNEL, peer, LOCAL, Level.UNIQUE, k + 1)
                spd.add(Policy(Selector(PROTECTED, inner), Direction.OUT, Action.IPSEC, (out,)))
                spd.add(Policy(Selector(inner, PROTECTED), Direction.IN, Action.IPSEC, (back,)))
                spd.add(Policy(Selector(inner, PROTECTED), Direction.FWD, Action.IPSEC, (back,)))
            publisher.publish(spd, outbound, [LOCAL], slot_info,
                              policy_changes=spd.take_changes(), dirty_slots=dirty)
            refresh()
        os.write(go_w, b"q")
        os.close(go_w)
        data = b""
        while chunk := os.read(done_r, 1 << 20):
            data += chunk
        os.close(done_r)
        os.waitpid(pid, 0)
    finally:
        table.close()
        policy.close()
    result = json.loads(data)
    ours = sum(1 for k in range(children) if (0xC000_0000 + k) % workers == 0)
    if (result["outbound"], result["inbound"], result["rules"]) != (children, ours,
                                                                      3 * children):
        raise RuntimeError(f"the worker did not take up every SA and policy: {result}")
    times = result["times"]
    sas = 2 * children
    quarter = max(1, len(times) // 4)
    per_batch = 2 * batch * quarter
    return {"per_sa": sum(times) / 1e3 / sas, "first": sum(times[:quarter]) / 1e3 / per_batch,
            "last": sum(times[-quarter:]) / 1e3 / per_batch, "gc": result["gc_ns"] / 1e3 / sas,
            "objects": result["objects"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.bench_takeup",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--children", default="1000,3000", help="children per run (default 1000,3000)")
    parser.add_argument("--batch", type=int, default=45, help="children per publication (default 45)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size; the median is printed")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers the inbound SAs are steered over (the one timed takes up "
                             "every outbound SA and its share of the inbound ones; default 1)")
    args = parser.parse_args(argv)
    print(f"worker CPU per SA installed (us), worker 0 of {args.workers}: median of runs; first / "
          "last quarter, garbage collector, tracked objects of the last run")
    for children in (int(c) for c in args.children.split(",")):
        runs = [run(children, args.batch, args.workers) for _ in range(args.runs)]
        median = statistics.median(r["per_sa"] for r in runs)
        last = runs[-1]
        print(f"  {children:6d} children: {median:6.1f} us per SA  (first quarter "
              f"{last['first']:.1f}, last {last['last']:.1f}; gc {last['gc']:.1f}; "
              f"{last['objects']:.0f} objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
