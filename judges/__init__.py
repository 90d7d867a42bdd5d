"""LLM-as-judge: rubrics, fenced prompts, answer parsing, the OpenAI-compatible client, pairwise judging."""
