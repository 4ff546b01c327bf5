"""Where every seed of a session comes from: 128-bit keys drawn from the OS, bound to CrypTen's generators.

CrypTen seeds its generators with 64-bit integers (the dealer's from its own ``torch.randint``,
whose Mersenne Twister carries 32 bits of entropy), and Mersenne Twister uses 32 of them. Here,
when a session opens (the runtime's ``keys`` patch, :mod:`mpcformer.mpc.runtime`, in every process
of it, before ``crypten.init``):

- **pairwise and local keys** (CrypTen's ``_setup_prng``): each party draws a ``next`` and a
  ``local`` key from ``secrets``, sends ``next`` to the next party (which uses it as ``prev``) and
  party 0 draws and broadcasts the ``global`` key, as CrypTen does with its seeds;
- **dealer keys** (CrypTen's TTP ``_setup_generators``): the dealer draws one key per party from
  ``secrets`` and sends each party its own; the dealer keeps them all, as CrypTen's TTP keeps the seeds.

Each key is bound to the matching CrypTen generator (:func:`mpcformer.mpc.prg.bind_key`; one key
per device, derived from the drawn key, so a CPU and a CUDA generator never share a stream), and
every mask, share, triple, weight mask and triple stream is drawn from AES-CTR under it. Keys are
fresh for every session, also when one dealer actor serves many. The generators themselves are
seeded from a hash of their key only so that nothing draws from a default-seeded one.
"""

from __future__ import annotations

import hashlib
import secrets

import torch
import torch.distributed as dist

from mpcformer.mpc.compat import crypten
from crypten import communicator as comm
from crypten.mpc.provider.ttp_provider import TTPClient

from mpcformer.mpc import prg

__all__ = ["setup_prng", "client_setup", "new_key", "dealer_setup", "session_keys"]

_ROLES = ("prev", "next", "local", "global")


def new_key() -> bytes:
    """128 bits from the operating system's generator."""
    return secrets.token_bytes(prg.KEY_BYTES)


def _as_tensor(key: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(key), dtype=torch.uint8).clone()


def _as_key(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.to(torch.uint8).tolist())


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda")] + [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return devices


def _keyed_generator(key: bytes, device: torch.device) -> torch.Generator:
    """A generator on ``device`` that draws under a per-device key derived from ``key``."""
    generator = torch.Generator(device=device)
    device_key = prg.derive_key(key, b"mpcformer-dev", str(device).encode())
    generator.manual_seed(int.from_bytes(hashlib.blake2b(device_key, digest_size=8).digest(), "little"))
    prg.bind_key(generator, device_key)
    return generator


def setup_prng() -> None:
    """CrypTen's ``_setup_prng`` (prev/next/local/global generators) with OS keys."""
    keys = {"next": new_key(), "local": new_key(), "global": new_key()}
    world_size, rank = comm.get().get_world_size(), comm.get().get_rank()
    if world_size >= 2:
        prev = torch.zeros(prg.KEY_BYTES, dtype=torch.uint8)
        sending = comm.get().isend(_as_tensor(keys["next"]), (rank + 1) % world_size)
        receiving = comm.get().irecv(prev, src=(rank - 1) % world_size)
        sending.wait()
        receiving.wait()
        keys["prev"] = _as_key(prev)
    else:
        keys["prev"] = keys["next"]
    keys["global"] = _as_key(comm.get().broadcast(_as_tensor(keys["global"]), 0))
    for role in _ROLES:
        for device in _devices():
            crypten.generators[role][device] = _keyed_generator(keys[role], device)


def client_setup(client) -> None:
    """CrypTen's ``TTPClient._setup_generators``: receive this party's key from the dealer."""
    key = torch.zeros(prg.KEY_BYTES, dtype=torch.uint8)
    dist.irecv(tensor=key, src=comm.get().get_ttp_rank(), group=client.ttp_group).wait()
    dist.barrier(group=client.ttp_group)
    key = _as_key(key)
    client.generator = _keyed_generator(key, torch.device("cpu"))
    client.generator_cuda = _keyed_generator(key, torch.device("cuda")) if torch.cuda.is_available() else None


def dealer_setup(server) -> None:
    """The dealer's side (CrypTen's ``TTPServer._setup_generators``): a fresh key per party, sent to it."""
    world_size = comm.get().get_world_size()
    keys = [new_key() for _ in range(world_size)]
    tensors = [_as_tensor(key) for key in keys]  # alive until sent
    sends = [dist.isend(tensor=tensors[i], dst=i, group=server.ttp_group) for i in range(world_size)]
    server.generators = [_keyed_generator(key, torch.device("cpu")) for key in keys]
    server.generators_cuda = [
        _keyed_generator(key, torch.device("cuda")) if torch.cuda.is_available() else None for key in keys
    ]
    for send in sends:
        send.wait()
    dist.barrier(group=server.ttp_group)


def session_keys() -> dict[str, bytes]:
    """This party's keys bound in the open session (``prev``, ``next``, ``local``, ``global``, and
    ``dealer`` with a TTP dealer), per CPU generator: for tests and audits."""
    cpu = torch.device("cpu")
    found = {role: prg.generator_key(crypten.generators[role][cpu]) for role in _ROLES}
    if crypten.mpc.ttp_required():
        found["dealer"] = prg.generator_key(TTPClient.get().get_generator(device=cpu))
    return found
