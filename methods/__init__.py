"""Speculative decoding methods. Each module registers a builder in ``harness.generator.METHODS`` and a
config schema in Hydra's ConfigStore; ``conf/method/<name>.yaml`` selects it."""

from methods import adaptive, ar, eagle, eagle2, eagle3, hf_peers, hydra, layerskip, lookahead, medusa, pld, recycling, rest, sam, sjd, sps  # noqa: F401
