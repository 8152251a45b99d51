"""LLM-as-a-judge evaluation of recorded chat turns: metrics as prompt files, runs and scores in the database."""
