"""Secure aggregation: the server learns only the sum of the clients' updates.

SecAgg (Bonawitz et al., CCS 2017, ePrint 2017/281) with SecAgg+'s sparse neighbour
graphs (Bell et al., CCS 2020, ePrint 2020/704), built on the ``cryptography`` package.
"""

from fedray.secagg.graph import default_degree, harary_neighbours
from fedray.secagg.protocol import SecAggAbortError, SecAggClient, SecAggError, SecAggServer
from fedray.secagg.quantize import Quantizer
from fedray.secagg.shamir import shamir_combine, shamir_split
from fedray.secagg.simulate import run_protocol

__all__ = [
    "Quantizer",
    "SecAggAbortError",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "default_degree",
    "harary_neighbours",
    "run_protocol",
    "shamir_combine",
    "shamir_split",
]
