"""What one exchange costs on each party channel: two ranks swap a tensor, over gloo or the TLS mesh.

    python benchmarks/transport_exchange.py --elements 1024 393216 --exchanges 200

Two processes on this host, one per rank; each sends its tensor and receives the peer's, as an
opening does, ``--exchanges`` times after a few warm-up swaps. Prints, per transport and size, the
wall time per exchange (the slower rank's) and the CPU time per exchange (both ranks together).
The TLS side runs the mesh of :mod:`mpcformer.mpc.secure_transport` directly (a session CA issued
into a temporary folder), without torch.distributed around it; gloo runs ``isend`` + ``recv``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import tempfile
import threading
import time

WARMUP = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tls_rank(rank: int, port: int, credentials: str, elements: int, exchanges: int, results) -> None:
    import torch

    from mpcformer.mpc.credentials import load_credentials
    from mpcformer.mpc.secure_transport import Mesh, _as_bytes, _fill, _target

    torch.set_num_threads(1)
    mesh = Mesh(rank, 2, f"tcp://127.0.0.1:{port}", load_credentials(credentials, rank), timeout_s=60).connect()
    mine, theirs = torch.randint(-2**62, 2**62, (elements,), dtype=torch.int64), torch.empty(elements, dtype=torch.int64)

    def swap(seq: int) -> None:
        done, failed = threading.Event(), []
        mesh.send(1 - rank, 1, seq, _as_bytes(mine))
        mesh.expect(1 - rank, 1, seq, lambda payload: (_fill(theirs, payload), done.set()),
                    lambda err: (failed.append(err), done.set()), "the peer's tensor", _target(theirs))
        done.wait()
        if failed:
            raise failed[0]

    for seq in range(WARMUP):
        swap(seq)
    wall, cpu = time.perf_counter(), time.process_time()
    for seq in range(WARMUP, WARMUP + exchanges):
        swap(seq)
    results.put((time.perf_counter() - wall, time.process_time() - cpu))
    time.sleep(0.5)  # the peer's last receive completes before the connection closes
    mesh.close()


def _gloo_rank(rank: int, port: int, credentials: str, elements: int, exchanges: int, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mine, theirs = torch.randint(-2**62, 2**62, (elements,), dtype=torch.int64), torch.empty(elements, dtype=torch.int64)

    def swap() -> None:
        sending = dist.isend(mine, 1 - rank)
        dist.recv(theirs, 1 - rank)
        sending.wait()

    for _ in range(WARMUP):
        swap()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(exchanges):
        swap()
    results.put((time.perf_counter() - wall, time.process_time() - cpu))
    dist.barrier()  # neither rank tears gloo down while the peer's last send is in flight
    dist.destroy_process_group()


def measure(transport: str, elements: int, exchanges: int, credentials: str) -> tuple[float, float]:
    """Seconds per exchange: wall (the slower rank) and CPU (both ranks)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    target = _tls_rank if transport == "tls" else _gloo_rank
    port = _free_port()
    ranks = [context.Process(target=target, args=(r, port, credentials, elements, exchanges, results)) for r in (0, 1)]
    for process in ranks:
        process.start()
    times = [results.get(timeout=600) for _ in ranks]
    for process in ranks:
        process.join()
    return max(t[0] for t in times) / exchanges, sum(t[1] for t in times) / exchanges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, nargs="+", default=[1024, 393216], help="int64 elements per tensor")
    parser.add_argument("--exchanges", type=int, default=200)
    parser.add_argument("--transports", nargs="+", default=["gloo", "tls"], choices=["gloo", "tls"])
    args = parser.parse_args()

    from mpcformer.mpc.credentials import issue_credentials

    with tempfile.TemporaryDirectory() as folder:
        credentials = str(issue_credentials(f"{folder}/session", ranks=2))
        print("| transport | MB per tensor | wall per exchange (ms) | CPU per exchange, both ranks (ms) |")
        print("| --- | ---: | ---: | ---: |")
        for elements in args.elements:
            for transport in args.transports:
                wall, cpu = measure(transport, elements, args.exchanges, credentials)
                print(f"| {transport} | {elements * 8 / 1e6:.3f} | {wall * 1e3:.2f} | {cpu * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
