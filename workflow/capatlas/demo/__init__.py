"""Demo wing (rules/demo.smk): the synthetic world with planted truth and the tiny model trained on it.

world  `capatlas demo-world`: corpus, benchmark items, ground truth
text   the world's vocabulary, sentence writers and format templates
model  `capatlas demo-model`: tokenizer and tiny OLMo-3 model trained on the world
"""
