"""How samples are scored and paired: LLM judges, pairwise verdicts, reward rules, length instructions, pair rules."""
