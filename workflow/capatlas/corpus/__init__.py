"""Corpus wing (rules/corpus.smk): read a labelled corpus, sample the working set, split it into shards.

readers   Dolma-style records from *.jsonl[.zst|.gz] / parquet, label resolution
labels    `capatlas labels`: WebOrganizer classifiers over one corpus file
manifest  `capatlas manifest`: dedup + stratified per-bin sample, locations, contract
shard     `capatlas shard`: token-balanced shards with text
"""
