"""Rebuilding prompts from stored history: tokenizers, the token budget, pruning, summaries."""
