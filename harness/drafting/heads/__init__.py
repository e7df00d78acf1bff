"""Learned draft heads: EAGLE-1/2/3 and Medusa/Hydra modules, the drafters that grow trees from them, their
official checkpoint layouts in and out, and the draft vocabularies they output over.
"""
