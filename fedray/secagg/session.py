"""One round of secure aggregation, the driver's side: a session, not a mode of the loop.

SecAgg (Bonawitz et al., CCS 2017, arXiv:1611.04482) with SecAgg+ neighbourhoods (Bell
et al., CCS 2020). The loop asks the aggregator for a session (its ``session()`` hook:
only :class:`~fedray.aggregators.SecureAggregation` has one, and
:func:`fedray.strategy.rules.check_compatible` keeps it outermost) and runs it around the
round's training, through the executor's typed protocol steps (``Executor.call``):

1. :meth:`SecureSession.start` (rounds 0-1): too small a cohort aborts before any
   training; keys are advertised and encrypted shares routed; the clients that
   completed key exchange are the ones that train (and mask, in their hosts).
2. :meth:`SecureSession.finish` (rounds 2-3): the masked vectors are collected, the
   survivors unmask, and the integer sum is decoded into one
   :class:`~fedray.records.PartialSum` for the aggregator's ``finalize``. Too few
   survivors abort before any share is revealed.

The clients' side (:class:`SecureClients`: keys, shares, masking) runs in their hosts;
its secret keys never leave them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedray.records import AggState, ClientFailure, ClientUpdate, PartialSum, RoundInfo
from fedray.secagg.graph import default_degree, harary_neighbours
from fedray.secagg.protocol import SecAggAbortError, SecAggClient, SecAggError, SecAggServer

if TYPE_CHECKING:
    from fedray.aggregators.secure import SecureAggregation

logger = logging.getLogger(__name__)
_REQUIRED = (
    "privacy.secure_aggregation.min_clients, or under distributed DP the cohort less "
    "privacy.dp.max_dropout"
)


class MissingKeysError(RuntimeError):
    """A client has no secure-aggregation keys for this round: its host restarted."""


class SecureSession:
    """The driver's side of secure aggregation for ``secure``'s rounds."""

    def __init__(self, secure: SecureAggregation) -> None:
        self.secure = secure

    def start(
        self, executor: Any, ids: list[int], info: RoundInfo, rng: np.random.Generator
    ) -> tuple[list[int], list[ClientFailure], SecAggServer | None]:
        """Key exchange for the sampled ``ids``; returns (who trains, failures, server)."""
        secure = self.secure
        if len(ids) < secure.required_clients:
            reason = (
                f"secure aggregation needs at least {secure.required_clients} clients "
                f"({_REQUIRED}), {len(ids)} were sampled; the round aborted before any "
                "training"
            )
            return [], [ClientFailure(c, reason, "aborted") for c in ids], None
        n = len(ids)
        k = default_degree(n) if secure.degree is None else min(secure.degree, n - 1)
        graph = harary_neighbours(list(ids), k, rng)
        t = max(1, math.ceil(secure.threshold * (k + 1)))
        bits = secure.modulus_bits(n)
        server = SecAggServer(info.server_round, graph, t, bits)
        setup = {
            u: (list(server.neighbours[u]), server.threshold, server.modulus_bits) for u in ids
        }
        keys = executor.call(ids, "advertise", setup, info)
        routed = server.collect_keys(keys)
        shares = executor.call(sorted(routed), "share", routed, info)
        inbox = server.route_shares(shares)
        trained = sorted(executor.call(sorted(inbox), "inbox", inbox, info))
        dropped = [
            ClientFailure(c, "dropped during secure-aggregation key exchange", "secagg")
            for c in sorted(set(ids) - set(trained))
        ]
        return trained, dropped, server

    def finish(
        self,
        server: SecAggServer,
        executor: Any,
        updates: Sequence[ClientUpdate],
        info: RoundInfo,
        agg_state: AggState,
    ) -> tuple[PartialSum | None, list[ClientFailure]]:
        """Unmask the survivors' sum; returns (the decoded sum, failures).

        When the protocol aborts (too few survivors; nothing is revealed) there is no
        sum and every client that sent a vector failed.
        """
        secure = self.secure
        dim = secure.dim(agg_state)
        failures: list[ClientFailure] = []
        masked: dict[int, np.ndarray] = {}
        for u in updates:
            if u.masked is None:
                failures.append(ClientFailure(u.client_id, "sent an unmasked update under SecAgg"))
            elif u.masked.size != dim:
                reason = f"masked update has {u.masked.size} values, expected {dim}"
                failures.append(ClientFailure(u.client_id, reason))
            else:
                masked[u.client_id] = u.masked
        try:
            dropped, survivors = server.collect_masked(masked)
            if len(survivors) < secure.required_clients:
                raise SecAggError(
                    f"{len(survivors)} clients survived, fewer than "
                    f"{secure.required_clients} ({_REQUIRED}); aborted before any share "
                    "was revealed"
                )
            asks = {u: (dropped, survivors) for u in survivors}
            responses = executor.call(survivors, "unmask", asks, info)
            total = server.unmask(responses)
        except SecAggError as exc:
            failures += [ClientFailure(c, f"secure aggregation: {exc}", "aborted") for c in masked]
            return None, failures
        if not survivors:
            return None, failures
        return secure.decode(total, survivors, agg_state, info), failures


class SecureClients:
    """The clients' side of secure aggregation, inside their host.

    Holds each client's :class:`~fedray.secagg.protocol.SecAggClient` for the round
    (its secret keys never leave the host) and the shares addressed to it.

    Args:
        min_survivors: The host's own bound on the survivors an unmask request may
            name (the aggregator's ``required_clients``): a lying server cannot unmask
            a sum of fewer.
    """

    def __init__(self, min_survivors: int = 1) -> None:
        self.clients: dict[int, SecAggClient] = {}
        self.inbox: dict[int, dict[int, bytes]] = {}
        self.min_survivors = min_survivors

    @classmethod
    def for_aggregator(cls, aggregator: Any) -> SecureClients:
        """The host's side for the strategy's ``aggregator`` (bounded by its secure link).

        >>> SecureClients.for_aggregator(object()).min_survivors
        1
        """
        from fedray.aggregators.base import chain
        from fedray.aggregators.secure import SecureAggregation

        secure = [a for a in chain(aggregator) if isinstance(a, SecureAggregation)]
        return cls(min_survivors=secure[0].required_clients if secure else 1)

    def step(
        self, name: str, client_ids: Sequence[int], payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """One protocol step for each of ``client_ids``; a client that fails is left out.

        ``advertise`` makes each client's fresh key pairs (kept here, never returned),
        ``share`` returns its encrypted Shamir shares, ``inbox`` stores the shares
        addressed to it, and ``unmask`` returns the shares the server may have. The
        masking itself happens in the host's ``fit`` (:meth:`mask`).

        Raises:
            SecAggError: A protocol violation (tampering): it must stop the round.
        """
        out: dict[int, Any] = {}
        for cid in client_ids:
            try:
                if name == "advertise":
                    neighbours, threshold, bits = payload[cid]
                    client = SecAggClient(
                        cid, info.server_round, neighbours, threshold, bits, self.min_survivors
                    )
                    self.clients[cid] = client
                    out[cid] = client.advertise()
                elif name == "share":
                    out[cid] = self.clients[cid].share_keys(payload[cid])
                elif name == "inbox":
                    self.inbox[cid] = payload[cid]
                    out[cid] = True
                elif name == "unmask":
                    dropped, survivors = payload[cid]
                    out[cid] = self.clients.pop(cid).unmask(dropped, survivors)
                    self.inbox.pop(cid, None)
                else:
                    raise ValueError(f"unknown secure-aggregation step {name!r}")
            except SecAggAbortError as exc:  # too few live neighbours: this client drops out
                logger.warning("client %d: %s", cid, exc)
                self.clients.pop(cid, None)
            except SecAggError:
                raise
            except Exception as exc:
                logger.warning("client %d: secure aggregation step %s failed: %s", cid, name, exc)
        return out

    def mask(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """Mask a quantized update with its client's keys of this round.

        Raises:
            MissingKeysError: The client has no keys for this round (its host restarted).
            ValueError: The update carries nothing to mask.
        """
        client = self.clients.get(update.client_id)
        if client is None or client.round_id != info.server_round:
            raise MissingKeysError(
                f"client {update.client_id} has no secure-aggregation keys for round "
                f"{info.server_round} (its host restarted?)"
            )
        if update.masked is None:
            raise ValueError(f"client {update.client_id}: nothing to mask (no quantized update)")
        inbox = self.inbox.get(update.client_id, {})
        return replace(update, masked=client.masked_input(update.masked, inbox))
