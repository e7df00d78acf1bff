"""Where models come from: a Hub id or folder, the GGUF packages (SmolLM2, Gemma 3), the project's testbeds (the
MoE upcycled SmolLM2, the digits image model), and files named by Hub id.
"""
