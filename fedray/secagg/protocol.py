"""The SecAgg protocol with SecAgg+ neighbourhoods: client and server state machines.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017 (ePrint
2017/281); Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", CCS 2020 (ePrint 2020/704).

One round, semi-honest server, each client u with neighbours N(u) (a randomly relabelled
Harary graph of degree k; the complete graph is plain SecAgg):

0. **Advertise.** u makes two fresh X25519 key pairs (c for encrypting shares, s for
   masks) and a 32-byte self-mask seed b_u, inside its host; it sends the public keys.
1. **Share keys.** u splits s_u's secret key and b_u into t-of-(|N(u)|+1) Shamir shares,
   and sends each neighbour its shares encrypted with ChaCha20-Poly1305 under
   HKDF(X25519(c_u, c_v)), the round and both ids bound into the key and the associated
   data. The server relays ciphertexts it cannot read.
2. **Masked input.** With s_uv = HKDF(X25519(s_u, s_v), round, u, v) and the ChaCha20
   keystream as PRG (uniform mod 2^r), u sends
   y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)  (mod 2^r), + when u < v.
3. **Unmask.** The server names the dropped (U2 minus U3) and surviving (U3) clients. Each
   survivor returns s-shares of dropped neighbours and b-shares of surviving ones, never
   both for one client. From t shares the server rebuilds b_u (u ∈ U3) and s_v (v
   dropped), removes PRG(b_u) and the dropped clients' pairwise masks, and gets
   Σ_{u∈U3} x_u mod 2^r. Pairwise masks between survivors cancel exactly.

Guarantee (semi-honest): the server and fewer than t colluding clients learn only the
sum over U3 and who dropped. Not covered: a malicious server (no signatures or
consistency round), multi-round differencing of different participant sets.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedray.secagg.shamir import shamir_combine, shamir_split

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

SHARE_BYTES = 16  # one field element of GF(2^127 - 1)
SECRET_BYTES = 32


class SecAggError(Exception):
    """The protocol was misused or tampered with (e.g. a share failed authentication)."""


class SecAggAbortError(SecAggError):
    """Too few clients survived for the threshold: the round reveals nothing."""


def _info(purpose: str, round_id: int, u: int, v: int) -> bytes:
    return f"fedray|secagg|{purpose}|{round_id}|{min(u, v)}|{max(u, v)}".encode()


def _hkdf(shared: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def prg(seed: bytes, dim: int, modulus_bits: int) -> np.ndarray:
    """``dim`` uniform values mod 2^r from the ChaCha20 keystream of a 32-byte seed."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    wide = modulus_bits > 32
    nbytes = dim * (8 if wide else 4)
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    raw = stream.update(bytes(nbytes))
    words = np.frombuffer(raw, dtype=np.uint64 if wide else np.uint32).astype(np.uint64)
    out: np.ndarray = words & np.uint64((1 << modulus_bits) - 1)  # exact: 2^r | word range
    return out


def _pack(src: int, dst: int, s_share: Sequence[int], b_share: Sequence[int]) -> bytes:
    head = struct.pack(">qqHH", src, dst, len(s_share), len(b_share))
    body = b"".join(x.to_bytes(SHARE_BYTES, "big") for x in (*s_share, *b_share))
    return head + body


def _unpack(data: bytes) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    src, dst, ns, nb = struct.unpack(">qqHH", data[:20])
    vals = [
        int.from_bytes(data[20 + i * SHARE_BYTES : 20 + (i + 1) * SHARE_BYTES], "big")
        for i in range(ns + nb)
    ]
    return src, dst, tuple(vals[:ns]), tuple(vals[ns:])


def _nonce(sender: int) -> bytes:
    return sender.to_bytes(12, "big", signed=True)  # keys are per (round, pair): unique


def _ad(round_id: int, src: int, dst: int) -> bytes:
    return struct.pack(">qqq", round_id, src, dst)


@dataclass
class SecAggClient:
    """One client's side of one round; its secret keys never leave this object.

    Attributes:
        cid: The client id (its Shamir x-coordinate is ``cid + 1``).
        round_id: Bound into every key derivation and ciphertext.
        neighbours: N(u) from the server's graph.
        threshold: t, shares needed to rebuild this client's secrets.
        modulus_bits: r; masked vectors live in Z_{2^r}.
        min_survivors: The fewest survivors whose sum this client helps unmask, from its
            own configuration (distributed DP's m_min: fewer would carry too little
            noise), never from the server's word.
    """

    cid: int
    round_id: int
    neighbours: Sequence[int]
    threshold: int
    modulus_bits: int
    min_survivors: int = 1
    _revealed: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self.neighbours = sorted(set(self.neighbours) - {self.cid})
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self._b = secrets.token_bytes(SECRET_BYTES)
        self._peers: dict[int, tuple[X25519PublicKey, X25519PublicKey]] = {}
        self._received: dict[int, bytes] = {}
        self._own: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def advertise(self) -> tuple[bytes, bytes]:
        """Round 0: the two public keys (raw 32 bytes each)."""
        return self._c.public_key().public_bytes_raw(), self._s.public_key().public_bytes_raw()

    def _aead(self, v: int) -> ChaCha20Poly1305:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        shared = self._c.exchange(self._peers[v][0])
        return ChaCha20Poly1305(_hkdf(shared, _info("enc", self.round_id, self.cid, v)))

    def share_keys(self, public_keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Round 1: encrypted Shamir shares of s_u's key and b_u for each live neighbour.

        Raises:
            SecAggAbortError: Fewer than t share holders are alive.
        """
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        self._peers = {
            v: (X25519PublicKey.from_public_bytes(c), X25519PublicKey.from_public_bytes(s))
            for v, (c, s) in public_keys.items()
            if v in self.neighbours
        }
        holders = [self.cid, *sorted(self._peers)]
        if len(holders) < self.threshold:
            raise SecAggAbortError(
                f"client {self.cid}: {len(holders)} live share holders < threshold {self.threshold}"
            )
        xs = [h + 1 for h in holders]
        s_shares = shamir_split(self._s.private_bytes_raw(), self.threshold, xs)
        b_shares = shamir_split(self._b, self.threshold, xs)
        self._own = (s_shares[self.cid + 1], b_shares[self.cid + 1])
        out = {}
        for v in sorted(self._peers):
            plain = _pack(self.cid, v, s_shares[v + 1], b_shares[v + 1])
            ad = _ad(self.round_id, self.cid, v)
            out[v] = self._aead(v).encrypt(_nonce(self.cid), plain, ad)
        return out

    def masked_input(self, x: np.ndarray, ciphertexts: Mapping[int, bytes]) -> np.ndarray:
        """Round 2: y_u = x_u + PRG(b_u) + Σ ±PRG(s_uv) mod 2^r over neighbours in U2.

        ``ciphertexts`` are the shares addressed to this client (their senders form
        this client's view of U2); they are kept for the unmasking round.
        """
        self._received = {v: ct for v, ct in ciphertexts.items() if v in self._peers}
        r, mask = self.modulus_bits, np.uint64((1 << self.modulus_bits) - 1)
        y = (x.astype(np.uint64) + prg(self._b, x.size, r)) & mask
        for v in sorted(self._received):
            shared = self._s.exchange(self._peers[v][1])
            seed = _hkdf(shared, _info("mask", self.round_id, self.cid, v))
            p = prg(seed, x.size, r)
            y = ((y + p) if self.cid < v else (y - p)) & mask
        out: np.ndarray = y.astype(np.uint32) if self.modulus_bits <= 32 else y  # as sent
        return out

    def unmask(
        self, dropped: Sequence[int], survivors: Sequence[int]
    ) -> dict[int, tuple[str, tuple[int, ...]]]:
        """Round 3: s-shares of dropped neighbours and b-shares of surviving ones.

        A request that cannot come from an honest server is refused before anything
        is decrypted: one that lists this client as dropped or leaves it out of the
        survivors (this client did send its masked input), one that names fewer
        survivors than ``min_survivors`` (under distributed DP their sum would carry
        less noise than accounted), or one that names fewer than t survivors in this
        client's neighbourhood (the server could not reconstruct honestly, so the
        answer would only serve to isolate one input).

        Raises:
            SecAggError: Asked to reveal both kinds of share for one client, an
                inconsistent request (see above), or a share failed authentication
                (tampered or misrouted).
        """
        from cryptography.exceptions import InvalidTag

        both = set(dropped) & set(survivors)
        if both:
            raise SecAggError(
                f"client {self.cid}: refusing to reveal both shares of clients {sorted(both)}"
            )
        if self.cid in dropped or self.cid not in survivors:
            raise SecAggError(
                f"client {self.cid}: refusing an unmask request that lists this client as "
                "dropped (it sent its masked input)"
            )
        if len(survivors) < self.min_survivors:
            raise SecAggError(
                f"client {self.cid}: refusing an unmask request naming {len(survivors)} "
                f"survivors, fewer than the {self.min_survivors} whose sum may be revealed"
            )
        live = set(survivors) & {self.cid, *self.neighbours}
        if len(live) < self.threshold:
            raise SecAggError(
                f"client {self.cid}: refusing an unmask request naming {len(live)} survivors "
                f"in its neighbourhood, fewer than the threshold t={self.threshold}"
            )
        out: dict[int, tuple[str, tuple[int, ...]]] = {}
        for v, ct in sorted(self._received.items()):
            kind = "s" if v in dropped else "b" if v in survivors else None
            if kind is None:
                continue
            if self._revealed.setdefault(v, kind) != kind:
                raise SecAggError(f"client {self.cid}: already revealed the other share of {v}")
            try:
                plain = self._aead(v).decrypt(_nonce(v), ct, _ad(self.round_id, v, self.cid))
            except InvalidTag:
                raise SecAggError(
                    f"client {self.cid}: the share from client {v} failed authentication "
                    "(ChaCha20-Poly1305 tag mismatch: tampered with or misrouted)"
                ) from None
            src, dst, s_share, b_share = _unpack(plain)
            if (src, dst) != (v, self.cid):
                raise SecAggError(f"client {self.cid}: share addressed {src}->{dst}, not {v}")
            out[v] = (kind, s_share if kind == "s" else b_share)
        out[self.cid] = ("b", self._own[1])
        return out


@dataclass
class SecAggServer:
    """The server's side of one round: it relays, sums and unmasks, and sees no input.

    Attributes:
        round_id: The round.
        neighbours: The graph, client id -> neighbour ids.
        threshold: t.
        modulus_bits: r.
    """

    round_id: int
    neighbours: Mapping[int, Sequence[int]]
    threshold: int
    modulus_bits: int
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    u2: set[int] = field(default_factory=set)
    masked: dict[int, np.ndarray] = field(default_factory=dict)

    def collect_keys(
        self, keys: Mapping[int, tuple[bytes, bytes]]
    ) -> dict[int, dict[int, tuple[bytes, bytes]]]:
        """U1: each client gets its live neighbours' public keys."""
        self.keys = dict(keys)
        return {u: {v: keys[v] for v in self.neighbours[u] if v in keys} for u in keys}

    def route_shares(
        self, shares: Mapping[int, Mapping[int, bytes]]
    ) -> dict[int, dict[int, bytes]]:
        """U2: relay each encrypted share to its recipient (unreadable to the server)."""
        self.u2 = set(shares)
        inbox: dict[int, dict[int, bytes]] = {u: {} for u in self.u2}
        for src, out in shares.items():
            for dst, ct in out.items():
                if dst in inbox:
                    inbox[dst][src] = ct
        return inbox

    def collect_masked(self, masked: Mapping[int, np.ndarray]) -> tuple[list[int], list[int]]:
        """U3: the masked vectors; returns (dropped, survivors) for the unmask request.

        Raises:
            SecAggAbortError: Some secret that must be rebuilt has fewer than t surviving
                share holders; nothing is requested, so nothing is revealed.
        """
        self.masked = {u: y for u, y in masked.items() if u in self.u2}
        survivors = sorted(self.masked)
        dropped = sorted(self.u2 - set(survivors))
        for u in [*survivors, *dropped]:
            holders = [w for w in [u, *self.neighbours[u]] if w in self.masked and w in self.u2]
            if len(holders) < self.threshold:
                raise SecAggAbortError(
                    f"round {self.round_id}: client {u}'s secret has {len(holders)} surviving "
                    f"share holders, fewer than the threshold t={self.threshold}; aborted "
                    "before any share was revealed"
                )
        return dropped, survivors

    def unmask(
        self, responses: Mapping[int, Mapping[int, tuple[str, Sequence[int]]]]
    ) -> np.ndarray:
        """Rebuild the secrets from the shares and return Σ_{U3} x_u mod 2^r.

        Raises:
            SecAggAbortError: Fewer than t shares arrived for some secret.
        """
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )

        r, mask = self.modulus_bits, np.uint64((1 << self.modulus_bits) - 1)
        survivors = sorted(self.masked)
        dropped = sorted(self.u2 - set(survivors))
        dim = next(iter(self.masked.values())).size
        total = np.zeros(dim, np.uint64)
        for y in self.masked.values():
            total = (total + y.astype(np.uint64)) & mask

        def secret(v: int, kind: str) -> bytes:
            shares = {
                w + 1: tuple(share)
                for w, resp in responses.items()
                for who, (k, share) in resp.items()
                if who == v and k == kind
            }
            if len(shares) < self.threshold:
                raise SecAggAbortError(
                    f"round {self.round_id}: {len(shares)} {kind}-shares of client {v} < "
                    f"threshold {self.threshold}"
                )
            return shamir_combine(shares, self.threshold, SECRET_BYTES)

        for u in survivors:
            total = (total - prg(secret(u, "b"), dim, r)) & mask
        for v in dropped:
            s_v = X25519PrivateKey.from_private_bytes(secret(v, "s"))
            for u in survivors:
                if u in self.neighbours[v]:
                    s_u_pub = X25519PublicKey.from_public_bytes(self.keys[u][1])
                    seed = _hkdf(s_v.exchange(s_u_pub), _info("mask", self.round_id, u, v))
                    p = prg(seed, dim, r)
                    total = ((total - p) if u < v else (total + p)) & mask
        out: np.ndarray = total
        return out
