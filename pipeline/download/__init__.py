"""The download stage: CommonPool metadata (local or from the hub) -> ``shards/`` with img2dataset,
behind the network guard, with failures recorded per sample.
"""
