#!/usr/bin/env python
"""speclab entry point: ``python run.py method=pld task=mtbench`` (Hydra overrides; ``-m`` for sweeps)."""

from harness.cli import main

if __name__ == "__main__":
    main()
