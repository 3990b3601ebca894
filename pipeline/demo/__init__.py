"""The built-in demo: a synthetic pool with labelled defects, its image server on 127.0.0.1, and the
quickstart that runs the whole pipeline on it. Nothing else in poolsieve imports this package.
"""
