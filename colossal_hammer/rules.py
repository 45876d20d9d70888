"""Rules that training, evaluation and the planner must apply alike, at the bottom of the package stack so
each reads them without importing the others (and without torch: the planner runs without it)."""

# Colossal-AI's default make_vocab_size_divisible_by: plugins 3d and moe pad the vocabulary to it times tp at
# model build (model.build.pad_vocabulary); training passes it to Colossal-AI, the planner counts the rows.
VOCAB_MULTIPLE = 64


def vocab_multiple(cfg) -> int:
    return VOCAB_MULTIPLE * cfg.tp if cfg.plugin in ("3d", "moe") else 1


def fixed_row_length(cfg) -> bool:
    """Every batch has the same shape: random tokens, or rows padded to --max_length."""
    return cfg.benchmark or cfg.padding_mode == "max_length"
