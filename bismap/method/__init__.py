"""BiSMAP's own algorithms, apart from the generic machinery in engine/.

labelling (the target label rules: confidence, class-balanced percentile, GMM log-likelihood),
prior_alignment (class-prior alignment of target predictions, source or EM-estimated target prior),
prototypes (per-class diagonal Gaussian mixtures, the MAPs), kmeans (their initialiser and the
STM's target prototypes), label_shards and sharding (a label stage as shard jobs), stm_files (the
STM stages' file formats), losses (weighted CE, symmetric CE, consistency, distillation), steps (the
loss terms self-training and distillation share).
A method module may use engine/, data/, models/, evaluation/ and io; never a stage or the workflow.
"""
