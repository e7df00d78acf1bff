"""The target model as the engine runs it: the wrapper (prefill, forward over a draft tree -> logits and hidden
states), its KV cache, device and dtype, linear kernels and the per-host kernel choice, CUDA-graph forwards, MoE
expert accounting, and the tiny seeded models of the tests.
"""
