"""The filter stage: score tables -> ``subsets/{name}.npy`` + ``.json`` with the filters of
``poolsieve.filters`` and their set algebra.
"""
