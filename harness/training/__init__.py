"""Training pieces every head and draft trainer shares: the target's own answers and hidden states, cached
as shards (``data``), and the loop scaffolding (``loop``: progress, resumable checkpoints, held-out tau)."""
