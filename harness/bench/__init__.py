"""Timing methods against the baseline: the runner (interleaved sides, warm-up, resume), its rows, timing and load
monitoring, greedy equivalence, progress and summary, synthetic acceptance, and sweeps.
"""
