"""The score stage: ``shards/`` -> ``scores/{shard}.parquet`` + ``.npz`` (open_clip embeddings and CLIP
scores), reference sets, and DataComp's released metadata imported as score tables.
"""
