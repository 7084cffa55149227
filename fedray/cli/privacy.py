"""``fedray privacy``: the accountant from the command line, no training.

ε of DP-FedAvg for (z, q, T, δ), or the z for a target ε; adaptive clipping's split;
distributed DP's per-client ε for a model's size.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedray.errors import FedrayError


def _distributed(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedray.privacy import DistributedPlan, distributed_epsilon
    from fedray.privacy.distributed import calibrate

    if not args.clients or not args.dim or args.dim < 1:
        raise FedrayError("--distributed needs --clients N and --dim D (the model's size) >= 1")
    try:
        plan = DistributedPlan(
            args.distributed,
            args.noise_multiplier or 1.0,
            1.0,
            args.dim,
            args.bits,
            args.sampling_rate * args.clients,
            args.clients,
            args.max_dropout,
        )
        if args.noise_multiplier is None:
            z = calibrate(plan, args.target_epsilon, args.rounds, args.delta)
            plan = replace(plan, noise_multiplier=z)
            print(f"noise_multiplier z = {z:.4f} for ε <= {args.target_epsilon:g} per client")
    except ValueError as exc:
        raise FedrayError(f"--distributed {args.distributed}: {exc}") from None
    eps = distributed_epsilon(plan, args.rounds, args.delta)
    print(
        f"{args.distributed}: z={plan.noise_multiplier:g}, d={args.dim}, "
        f"m={plan.expected_clients:g} (m_min={plan.min_survivors}), {args.bits} bits "
        f"(modulus 2^{plan.modulus_bits})"
    )
    print(
        f"ε per client after {args.rounds} releases at δ={args.delta:g}: {eps:.4f} "
        "(against the server: no amplification by sampling)"
    )
    return 0


def _problems(args: argparse.Namespace) -> list[str]:
    """Every bad argument of ``fedray privacy``, each in a few words."""
    q, rounds, delta = args.sampling_rate, args.rounds, args.delta
    problems = []
    if not 0 < q <= 1:
        problems.append(f"--sampling-rate = {q}: expected 0 < q <= 1")
    if rounds < 1:
        problems.append(f"--rounds = {rounds}: expected an integer >= 1")
    if not 0 < delta < 1:
        problems.append(f"--delta = {delta}: expected 0 < δ < 1, e.g. 1e-5")
    if args.noise_multiplier is not None and args.noise_multiplier < 0:
        problems.append(f"--noise-multiplier = {args.noise_multiplier}: expected z >= 0")
    if args.target_epsilon is not None and args.target_epsilon <= 0:
        problems.append(f"--target-epsilon = {args.target_epsilon}: expected ε > 0")
    if args.sampling == "fixed" and not args.clients:
        problems.append("--sampling fixed needs --clients N")
    m, sigma_b = args.expected_clients, args.count_stddev
    if m is not None and not m > 0:
        problems.append(f"--expected-clients = {m}: expected m > 0")
    if sigma_b is not None and (m is None or not sigma_b > 0):
        problems.append(f"--count-stddev = {sigma_b}: expected σ_b > 0, with --expected-clients")
    return problems


def privacy(args: argparse.Namespace) -> int:
    """``fedray privacy``: ε for z, or z for ε (DP-FedAvg, adaptive clipping, distributed DP)."""
    from fedray.privacy import calibrate_noise_multiplier, dpfedavg_epsilon

    problems = _problems(args)
    if problems:
        raise FedrayError("; ".join(problems))
    q, rounds, delta = args.sampling_rate, args.rounds, args.delta
    m, sigma_b = args.expected_clients, args.count_stddev
    if args.distributed:
        return _distributed(args)
    common = {"sampling": args.sampling, "population": args.clients}
    z = args.noise_multiplier
    if z is None:
        try:
            z = calibrate_noise_multiplier(args.target_epsilon, q, rounds, delta, **common)
        except ValueError as exc:
            raise FedrayError(f"--target-epsilon = {args.target_epsilon}: {exc}") from None
        print(f"noise_multiplier z = {z:.4f} for ε <= {args.target_epsilon:g} (RDP)")
    print(f"z={z:g} q={q:g} T={rounds} δ={delta:g} ({args.sampling} sampling)")
    if m is not None:  # adaptive clipping: the run's own ledger prices these events
        from fedray.privacy import DPFedAvgAccountant, split_noise

        sigma_b = sigma_b if sigma_b is not None else m / 20
        try:
            z_delta = split_noise(z, sigma_b)
        except ValueError as exc:
            raise FedrayError(f"--count-stddev = {sigma_b:g}: {exc}") from None
        print(
            f"adaptive clipping: m={m:g}, σ_b={sigma_b:g}: updates z_Δ = {z_delta:.4f}, "
            f"centred count 2σ_b = {2 * sigma_b:g}"
        )
        ledger = DPFedAvgAccountant(z, q, delta, count_noise_multiplier=2 * sigma_b, **common)
        ledger.rounds = rounds
        print(f"ε (RDP) = {ledger.epsilon():.4f}")
        if args.sampling == "poisson":
            print(f"ε (PLD) = {ledger.epsilon(method='pld'):.4f}")
        return 0
    eps_rdp = dpfedavg_epsilon(z, q, rounds, delta, **common)
    print(f"ε (RDP) = {eps_rdp:.4f}")
    if args.sampling == "poisson":
        eps_pld = dpfedavg_epsilon(z, q, rounds, delta, method="pld")
        print(f"ε (PLD) = {eps_pld:.4f}")
    return 0


def add_parser(sub: Any) -> None:
    """``fedray privacy``: its arguments, beside the command."""
    pv = sub.add_parser(
        "privacy",
        help="ε of DP-FedAvg for z, q, T, δ, or the z for a target ε (no training)",
    )
    what = pv.add_mutually_exclusive_group(required=True)
    what.add_argument("--noise-multiplier", "-z", type=float, help="z: report ε")
    what.add_argument("--target-epsilon", "-e", type=float, help="ε: report the z that gives it")
    pv.add_argument("--sampling-rate", "-q", type=float, required=True, help="q per round")
    pv.add_argument("--rounds", "-T", type=int, required=True, help="T rounds")
    pv.add_argument("--delta", "-d", type=float, required=True, help="δ, e.g. 1e-5")
    pv.add_argument(
        "--sampling",
        choices=["poisson", "fixed"],
        default="poisson",
        help="client sampling (fixed needs --clients)",
    )
    pv.add_argument("--clients", type=int, help="N, the client population (fixed sampling)")
    pv.add_argument(
        "--expected-clients",
        "-m",
        type=float,
        help="m = qN: plan an adaptive-clipping run (its noised count costs part of z)",
    )
    pv.add_argument(
        "--count-stddev",
        type=float,
        help="σ_b of adaptive clipping's count (default m / 20; needs --expected-clients)",
    )
    pv.add_argument(
        "--distributed",
        choices=["skellam", "discrete_gaussian"],
        help="distributed DP inside secure aggregation: per-client ε against the server, "
        "a client taking part in all T rounds (needs --clients and --dim)",
    )
    pv.add_argument("--dim", type=int, help="the model's parameters (distributed DP)")
    pv.add_argument("--bits", type=int, default=22, help="secure aggregation bits (distributed)")
    pv.add_argument("--max-dropout", type=float, default=0.1, help="privacy.dp.max_dropout")
