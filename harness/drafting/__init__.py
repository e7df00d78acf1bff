"""What several drafters share: tree shapes and budgets, retrieval datastores, suffix automata, draft models, the
early-exit adapter, the depth/cost policy, and ``heads/`` (EAGLE, Medusa and Hydra heads, their drafters and
checkpoint formats).
"""
