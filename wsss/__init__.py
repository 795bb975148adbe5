"""The ``wsss`` command line and the demo: the top of the import graph.

``wsss`` may import ``wsss_core`` (the library and its pipeline), ``launchers`` (sweeps and where they run)
and ``analysis`` (reports); none of them imports ``wsss`` (tests/test_imports.py enforces the direction).
"""
