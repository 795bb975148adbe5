"""One module per pipeline stage: its config slice, its inputs and its run function (a ``StageDef``).

The chains that put them in order are in ``wsss_core/pipeline/chains.py``.
"""
