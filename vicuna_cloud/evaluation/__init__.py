"""MT-Bench and Vicuna-bench: answers from an OpenAI-compatible endpoint, single-answer
grading by an LLM judge, and the report (run.py ties them together)."""
