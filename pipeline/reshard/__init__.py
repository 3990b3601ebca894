"""The reshard stage: a uid subset -> ``filtered/{name}/{:08d}.tar`` training shards (raw member copies).
"""
