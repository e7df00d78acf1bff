"""Speculative decoding methods, one module per method family.

Each module declares its families in ``FAMILIES`` (:class:`harness.core.registry.Family`: name, config schema,
builder) and imports no other method; ``conf/method/<name>.yaml`` selects one. ``harness.api.load_plugins()``
registers them all.
"""
