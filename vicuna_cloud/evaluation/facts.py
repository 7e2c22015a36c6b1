"""MT-Bench facts: sampling temperatures, judge settings, judge prompts, published scores.

Source: lm-sys/FastChat, fastchat/llm_judge (Apache-2.0; license text in
../shared/data/LICENSE-FastChat-Apache-2.0), and the MT-Bench paper (Zheng et al. 2023,
"Judging LLM-as-a-judge with MT-Bench and Chatbot Arena", arXiv:2306.05685):
- common.py: per-category temperatures (``temperature_config``), 0.7 for any other
  category (gen_api_answer.py); categories judged against a reference answer
  (``NEED_REF_CATS``: math, reasoning, coding); ratings parsed with ``[[N]]`` and, failing
  that, ``[N]``, else -1 (a failed judgment, left out of the averages by show_result.py);
  the judge runs at temperature 0 with at most 2,048 new tokens.
- gen_model_answer.py / gen_api_answer.py: 1,024 new tokens per turn, one choice; the
  second turn is asked in the same conversation, after the model's own first answer.
- gen_judgment.py (single mode): turn 1 with ``single-v1`` (``single-math-v1`` for the
  reference categories), turn 2 with ``single-v1-multi-turn`` (``single-math-v1-multi-turn``),
  only for two-turn questions.
- data/judge_prompts.jsonl: the judge prompts below. They are the published evaluation
  artifact that the published scores were produced with, so they are kept word for word
  (typos included): a reworded prompt would make scores incomparable.
- Published MT-Bench scores (GPT-4 judge, single-answer grading) of Vicuna: FastChat's
  MT-Bench leaderboard and docs/vicuna_weights_version.md.
"""

from __future__ import annotations

TEMPERATURE_BY_CATEGORY = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
    "reasoning": 0.0, "stem": 0.1, "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7
NEED_REFERENCE = frozenset({"math", "reasoning", "coding"})
MAX_NEW_TOKENS = 1024
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048
ERROR_OUTPUT = "$ERROR$"  # what FastChat writes for an answer or judgment that failed

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction",
                       "stem", "humanities")

#: (model, MT-Bench score) with GPT-4 as the judge.
PUBLISHED_MT_BENCH = (
    ("Vicuna-7B-v1.3", 5.95),
    ("Vicuna-13B-v1.3", 6.39),
    ("Vicuna-33B-v1.3", 7.12),
    ("Vicuna-7B-v1.5", 6.17),
    ("Vicuna-13B-v1.5", 6.57),
)

_RATE = ('you must rate the response on a scale of 1 to 10 by strictly following this '
         'format: "[[rating]]", for example: "Rating: [[5]]".')

#: name -> (system prompt, user prompt template). Word for word from FastChat's
#: data/judge_prompts.jsonl (see the module docstring for why).
JUDGE_PROMPTS = {
    "single-v1": (
        "You are a helpful assistant.",
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
        "response provided by an AI assistant to the user question displayed below. Your "
        "evaluation should consider factors such as the helpfulness, relevance, accuracy, "
        "depth, creativity, and level of detail of the response. Begin your evaluation by "
        "providing a short explanation. Be as objective as possible. After providing your "
        f"explanation, {_RATE}\n\n[Question]\n{{question}}\n\n[The Start of Assistant's "
        "Answer]\n{answer}\n[The End of Assistant's Answer]",
    ),
    "single-math-v1": (
        "You are a helpful assistant.",
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
        "response provided by an AI assistant to the user question displayed below. Your "
        "evaluation should consider correctness and helpfulness. You will be given a "
        "reference answer and the assistant's answer. Begin your evaluation by comparing the "
        "assistant's answer with the reference answer. Identify and correct any mistakes. Be "
        f"as objective as possible. After providing your explanation, {_RATE}\n\n[Question]\n"
        "{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference "
        "Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    ),
    "single-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided "
        "by an AI assistant to the user question displayed below. Your evaluation should "
        "consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
        "and level of detail of the response. You evaluation should focus on the assistant's "
        "answer to the second user question. Begin your evaluation by providing a short "
        f"explanation. Be as objective as possible. After providing your explanation, {_RATE}\n\n",
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
        "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n"
        "{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",
    ),
    "single-math-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided "
        "by an AI assistant to the user question. Your evaluation should consider correctness "
        "and helpfulness. You will be given a reference answer and the assistant's answer. "
        "You evaluation should focus on the assistant's answer to the second question. Begin "
        "your evaluation by comparing the assistant's answer with the reference answer. "
        "Identify and correct any mistakes. Be as objective as possible. After providing "
        f"your explanation, {_RATE}\n\n",
        "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference "
        "answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n"
        "{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's "
        "Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n{answer_1}"
        "\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n<|The End of "
        "Assistant A's Conversation with User|>",
    ),
}


def temperature_for(category: str) -> float:
    return TEMPERATURE_BY_CATEGORY.get(category, DEFAULT_TEMPERATURE)
