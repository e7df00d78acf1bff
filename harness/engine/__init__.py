"""The decoding engine: proposals and tree arithmetic, the drafter interface, the verifiers (greedy, lossless
rejection sampling, lossy rules flagged), the decoding loop, the method interface the runner times, and the
verify-cost curve c(k).
"""
