"""AES-128 in counter mode as CrypTen's pseudo-random generator on CPU.

CrypTen draws every mask, share and Beaver triple with ``torch.randint`` from seeded
``torch.Generator`` objects (Mersenne Twister): about 10 ns per 64-bit ring element on this CPU,
and not a cryptographic generator (its outputs reveal its state). With AES-NI, AES-CTR yields the
same 64 bits in about 2.5 ns and is a standard PRG. ``install()`` replaces CrypTen's two drawing
functions: a CPU generator is read as the AES key derived from its seed (``initial_seed()``), so
parties that CrypTen seeded alike (a party and the dealer, neighbouring parties) still draw the
same stream, call for call; CUDA generators keep ``torch.randint``. Seeds stay CrypTen's own (64
random bits from ``os.urandom`` or from the dealer's seeded torch generator).

Every process of a session must agree (``MPCConfig.fast_prg``): a party with the AES streams and
a dealer without them would hold unrelated masks and the results would be garbage.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpcformer.mpc.compat import crypten

import crypten.common.rng as crypten_rng

__all__ = ["install", "uninstall", "is_installed", "random_ring_elements", "keystream_int64", "aes_key"]

_BLOCK = 16  # AES block size: update_into needs this much slack in its output buffer
_ORIGINAL = {
    "generate_random_ring_element": crypten_rng.generate_random_ring_element,
    "generate_kbit_random_tensor": crypten_rng.generate_kbit_random_tensor,
}
# CrypTen modules that imported the functions by name, so each holds its own reference.
_IMPORTERS = (
    "crypten.common.rng",
    "crypten.mpc.primitives.arithmetic",
    "crypten.mpc.primitives.binary",
    "crypten.mpc.provider.ttp_provider",
    "crypten.mpc.provider.tfp_provider",
)

# One AES-CTR stream per CPU generator, dropped with the generator; (seed, encryptor) so that a
# generator re-seeded with another seed draws that seed's stream (CrypTen seeds each generator once).
_streams: "weakref.WeakKeyDictionary[torch.Generator, tuple[int, object]]" = weakref.WeakKeyDictionary()
_zeros = bytes(0)
_installed = False


def aes_key(seed: int, person: bytes, label: bytes = b"") -> bytes:
    """An AES-128 key from a 64-bit generator seed (and a label), by BLAKE2b personalised ``person``."""
    return hashlib.blake2b((seed % 2**64).to_bytes(8, "little") + label, digest_size=16, person=person).digest()


def _stream(generator: torch.Generator):
    seed = generator.initial_seed()
    entry = _streams.get(generator)
    if entry is None or entry[0] != seed:
        key = aes_key(seed, b"mpcformer-prg")
        entry = (seed, Cipher(algorithms.AES(key), modes.CTR(bytes(_BLOCK))).encryptor())
        _streams[generator] = entry
    return entry[1]


def _local_generator(kwargs: dict) -> torch.Generator:
    device = kwargs.get("device") or "cpu"
    return crypten.generators["local"][torch.device(device)]


def _is_cpu(generator: torch.Generator | None, kwargs: dict) -> bool:
    device = generator.device if generator is not None else torch.device(kwargs.get("device") or "cpu")
    return torch.device(device).type == "cpu"


def keystream_int64(encryptor: Any, count: int) -> torch.Tensor:
    """The next ``count`` int64 values (8 bytes each) of an AES-CTR ``encryptor``'s keystream."""
    global _zeros
    nbytes = 8 * count
    if len(_zeros) < nbytes:
        _zeros = bytes(max(nbytes, 2 * len(_zeros)))
    out = torch.empty(count + _BLOCK // 8, dtype=torch.int64)  # update_into wants a block of slack
    if count:
        encryptor.update_into(memoryview(_zeros)[:nbytes], out.numpy().view("u1"))
    return out[:count]


def random_ring_elements(size, generator: torch.Generator) -> torch.Tensor:
    """``size`` uniform int64 values (all 2^64 of them) from ``generator``'s AES-CTR stream."""
    size = torch.Size((size,)) if isinstance(size, int) else torch.Size(size)
    return keystream_int64(_stream(generator), size.numel()).view(size)


def generate_random_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
    """CrypTen's ``generate_random_ring_element`` drawing from AES-CTR on CPU."""
    if ring_size != 2**64 or not _is_cpu(generator, kwargs):
        return _ORIGINAL["generate_random_ring_element"](size, ring_size=ring_size, generator=generator, **kwargs)
    return random_ring_elements(size, generator or _local_generator(kwargs))


def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs):
    """CrypTen's ``generate_kbit_random_tensor`` (values in [0, 2^bitlength)) drawing from AES-CTR on CPU."""
    if not _is_cpu(generator, kwargs):
        return _ORIGINAL["generate_kbit_random_tensor"](size, bitlength=bitlength, generator=generator, **kwargs)
    bits = random_ring_elements(size, generator or _local_generator(kwargs))
    if bitlength is None or bitlength >= 64:
        return bits
    return (bits >> (64 - bitlength)) & ((1 << bitlength) - 1)


def _set(functions: dict) -> None:
    import importlib

    for module_name in _IMPORTERS:
        module = importlib.import_module(module_name)
        for name, fn in functions.items():
            if hasattr(module, name):
                setattr(module, name, fn)


def install() -> None:
    """Draw CrypTen's CPU randomness from AES-CTR (idempotent)."""
    global _installed
    _set({"generate_random_ring_element": generate_random_ring_element,
          "generate_kbit_random_tensor": generate_kbit_random_tensor})
    _installed = True


def uninstall() -> None:
    """Back to CrypTen's ``torch.randint`` draws."""
    global _installed
    _set(_ORIGINAL)
    _installed = False


def is_installed() -> bool:
    return _installed
