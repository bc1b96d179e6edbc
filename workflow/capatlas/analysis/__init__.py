"""Analysis wing (rules/analysis.smk): bin matrix, 2 x 2 contrasts, figures. CPU only and torch-free.

influence  `capatlas influence`: shard scores + bin sums -> the bin-level influence matrix
contrast   `capatlas contrast`: correlations, contrasts, sharpness, interaction, robustness
figures    `capatlas figures`: heatmaps, contrast bars, correlation matrices
"""
