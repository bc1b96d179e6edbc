"""Unlearning wing (rules/unlearning.smk): the causal check of what attribution flags.

forget_sets  `capatlas forget-sets`: influence-ranked and random forget sets, retain pools, the planned runs
unlearn      `capatlas unlearn`: one unlearning run (GA, GradDiff, NGDiff, NPO) and its evaluation
summary      `capatlas unlearning-summary`: gamma per run, paired statistics, figures
"""
