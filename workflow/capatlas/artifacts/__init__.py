"""Artifacts: the one owner of each file format passed between wings. Torch-free.

provenance     canonical JSON, provenance records and the identity checks on them
binsums        the per-shard bin sums score-shard writes and influence reads
doc_bootstrap  the keyed Poisson weights of the document bootstrap (score-shard draws, influence checks)
"""
