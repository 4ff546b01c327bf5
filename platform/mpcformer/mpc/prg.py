"""AES-128 in counter mode as CrypTen's pseudo-random generator, keyed by 128-bit OS keys.

CrypTen draws every mask, share and Beaver triple with ``torch.randint`` from seeded
``torch.Generator`` objects: Mersenne Twister, whose state comes from the low 32 bits of its seed
and whose outputs reveal that state. Here each of CrypTen's generators is only a *handle*: the
session binds a 128-bit key from the OS to it (:mod:`mpcformer.mpc.keys`, :func:`bind_key`), and
the session's runtime (patch ``prg`` of :mod:`mpcformer.mpc.runtime`) puts this module's two drawing
functions in place of CrypTen's, so that a generator draws the AES-CTR keystream of its key, call
for call. Parties holding the same key (a party and the dealer,
neighbouring parties) draw the same stream. A draw from a generator without a key is an error,
never a silent fallback to torch's generator. CUDA generators draw on the CPU and copy the values
to the device.

Every process of a session must agree (``MPCConfig.randomness``): a party with the AES streams and
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

__all__ = [
    "generate_random_ring_element", "generate_kbit_random_tensor", "random_ring_elements", "keystream_int64", "derive_key", "bind_key",
    "generator_key", "KEY_BYTES",
]

KEY_BYTES = 16  # 128-bit keys
_BLOCK = 16  # AES block size: update_into needs this much slack in its output buffer
_ORIGINAL = {
    "generate_random_ring_element": crypten_rng.generate_random_ring_element,
    "generate_kbit_random_tensor": crypten_rng.generate_kbit_random_tensor,
}

# Each generator's key, and its AES-CTR stream (key, encryptor); both dropped with the generator.
_keys: "weakref.WeakKeyDictionary[torch.Generator, bytes]" = weakref.WeakKeyDictionary()
_streams: "weakref.WeakKeyDictionary[torch.Generator, tuple[bytes, object]]" = weakref.WeakKeyDictionary()
_zeros = bytes(0)


def derive_key(key: bytes, person: bytes, label: bytes = b"") -> bytes:
    """A 128-bit key for one purpose (``person``, ``label``) from a 128-bit key: keyed BLAKE2b."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"keys are {KEY_BYTES} bytes, got {len(key)}")
    return hashlib.blake2b(label, key=key, digest_size=KEY_BYTES, person=person).digest()


def bind_key(generator: torch.Generator, key: bytes) -> None:
    """From now on ``generator`` draws the AES-CTR stream of ``key`` (from its start)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"keys are {KEY_BYTES} bytes, got {len(key)}")
    _keys[generator] = bytes(key)
    _streams.pop(generator, None)


def generator_key(generator: torch.Generator) -> bytes | None:
    """The key bound to ``generator``, or ``None`` (CrypTen's own seeding)."""
    return _keys.get(generator)


def _stream(generator: torch.Generator):
    key = _keys.get(generator)
    if key is None:
        raise RuntimeError(
            "a CrypTen generator without an OS key was asked for random values; every generator of a "
            "session gets its key when the session opens (mpcformer.mpc.keys)"
        )
    entry = _streams.get(generator)
    if entry is None or entry[0] is not key:
        aes = derive_key(key, b"mpcformer-prg")
        entry = (key, Cipher(algorithms.AES(aes), modes.CTR(bytes(_BLOCK))).encryptor())
        _streams[generator] = entry
    return entry[1]


def _local_generator(kwargs: dict) -> torch.Generator:
    device = kwargs.get("device") or "cpu"
    return crypten.generators["local"][torch.device(device)]


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
    """``size`` uniform int64 values (all 2^64 of them) from ``generator``'s AES-CTR stream (on CPU)."""
    size = torch.Size((size,)) if isinstance(size, int) else torch.Size(size)
    return keystream_int64(_stream(generator), size.numel()).view(size)


def _draw(size, generator: torch.Generator | None, kwargs: dict) -> torch.Tensor:
    generator = generator or _local_generator(kwargs)
    values = random_ring_elements(size, generator)
    device = kwargs.get("device") or generator.device
    return values if torch.device(device).type == "cpu" else values.to(device)


def generate_random_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
    """CrypTen's ``generate_random_ring_element`` drawing from the generator's AES-CTR stream."""
    if ring_size != 2**64:  # only CrypTen's tests use other rings
        return _ORIGINAL["generate_random_ring_element"](size, ring_size=ring_size, generator=generator, **kwargs)
    return _draw(size, generator, kwargs)


def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs):
    """CrypTen's ``generate_kbit_random_tensor`` (values in [0, 2^bitlength)) from AES-CTR."""
    bits = _draw(size, generator, kwargs)
    if bitlength is None or bitlength >= 64:
        return bits
    return (bits >> (64 - bitlength)) & ((1 << bitlength) - 1)
