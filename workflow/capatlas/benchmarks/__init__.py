"""Benchmarks wing: items and their loaders, attribution queries, multiple-choice evaluation.

items     loaders for SocialIQA, MMLU, ARC (hub ids or local paths) and prompt rendering
queries   `capatlas queries` (rules/attribution.smk): tokenised prompt + answer, completion-only labels
evaluate  `capatlas evaluate` (rules/unlearning.smk): log-likelihood accuracy and answer log-probability
"""
