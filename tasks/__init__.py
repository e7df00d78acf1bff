"""Prompt sets, one module per dataset family (``base.py`` holds the interface and the shared loading).

Each module declares its families in ``FAMILIES``; ``conf/task/<name>.yaml`` selects one.
``harness.api.load_plugins()`` registers them all.
"""
