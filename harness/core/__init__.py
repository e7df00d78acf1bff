"""The ground floor: errors, config schemas, the plugin registries, conf/ presets, a run's identity, the disk cache
and provenance. Imports nothing else of speclab.
"""
