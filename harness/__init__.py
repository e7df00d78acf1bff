"""speclab's decoding engine: one loop, one timing path, one results schema for every method."""
