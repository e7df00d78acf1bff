"""speclab's harness, in floors that import only downward:

core <- model <- loading <- engine <- drafting, results <- methods, tasks <- bench, training <- api <- cli

``harness.api`` is the way in from Python (``compose``, ``run``); ``harness.cli`` is ``python run.py``.
"""
