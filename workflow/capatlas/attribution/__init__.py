"""Attribution wing (rules/attribution.smk): TrackStar with Bergson.

context          what the three stages share: settings and fingerprint, model identity, tokenising, Bergson run dirs
precondition     `capatlas preconditioner`: the mixed preconditioner R over a sample of all shards plus the queries
query_gradients  `capatlas query-gradients`: each benchmark's preconditioned, unit-normalised query index
score_shard      `capatlas score-shard`: one shard's document scores and bin sums
"""
