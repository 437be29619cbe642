"""Counter-based randomness for SynthFaces: every draw is a hash of (key, salt), so an image never depends
on its batch. Owns the 64-bit mixer, string keys and the per-key uniform, normal and categorical draws.
"""
from __future__ import annotations

import zlib

import numpy as np

_F32 = np.float32


_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
GOLD = np.uint64(0x9E3779B97F4A7C15)


def mix(x):
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _C1
        x = (x ^ (x >> np.uint64(27))) * _C2
    return x ^ (x >> np.uint64(31))


def str_key(s: str) -> np.uint64:
    return np.uint64(zlib.crc32(s.encode("utf-8")) | (zlib.adler32(s.encode("utf-8")) << 32))


def combine(*parts) -> np.ndarray:
    key = np.zeros((), np.uint64)
    for p in parts:
        with np.errstate(over="ignore"):
            key = mix(key ^ mix(np.asarray(p, dtype=np.uint64)) + GOLD)
    return key


def erf_f32(x):
    """Vectorised error function (float32 in, float32 out)."""
    from scipy.special import erf
    return erf(np.asarray(x, np.float64)).astype(_F32)


class Draws:
    """Uniform draws for a batch of keys; each call uses a fresh salt so draws are independent."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.asarray(keys, np.uint64)
        self.salt = 0

    def u(self, k: int = 1) -> np.ndarray:
        salts = mix(np.arange(self.salt, self.salt + k, dtype=np.uint64) * GOLD + np.uint64(12345))
        self.salt += k
        x = mix(self.keys[:, None] ^ salts[None, :])
        u = ((x >> np.uint64(40)).astype(np.float32) + 0.5) * _F32(1.0 / (1 << 24))
        return u if k > 1 else u[:, 0]

    def uniform(self, lo, hi, k: int = 1):
        return _F32(lo) + (_F32(hi) - _F32(lo)) * self.u(k)

    def normal(self, k: int = 1):
        u1, u2 = self.u(2).T if k == 1 else (self.u(k), self.u(k))
        return (np.sqrt(-2.0 * np.log(u1)) * np.cos(_F32(2 * np.pi) * u2)).astype(_F32)

    def bern(self, p):
        return (self.u() < p).astype(np.int64)

    def choice(self, probs):
        """probs: [K] or [N,K] (rows need not be normalised)."""
        probs = np.asarray(probs, _F32)
        if probs.ndim == 1:
            probs = np.broadcast_to(probs, (len(self.keys), probs.shape[0]))
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        return np.minimum((self.u()[:, None] > cdf).sum(axis=1), probs.shape[1] - 1).astype(np.int64)
