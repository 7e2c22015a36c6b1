"""Deterministic raw ShareGPT-style conversations (the 2023 HTML scrapes), for tests,
the benchmark and the package's sample corpus.

Assistant turns are ChatGPT's rendered HTML (``<div class="markdown prose ...">`` with
paragraphs, lists, tables and code blocks carrying the "Copy code" header), human turns
are plain text, sometimes with a "2 / 2" regenerate counter glued to the front. The mix
includes non-English conversations, long multi-turn ones, plugin conversations, rate-limit
error replies, duplicates and a few malformed role orders: everything the cleaner has to
handle. ``generate(n, seed)`` is a pure function of its arguments.
"""

from __future__ import annotations

import html
import json
import os
import random
from typing import Iterator

PROSE_DIV = '<div class="markdown prose w-full break-words dark:prose-invert light">'

# Real sentences written for this generator, by language.
SENTENCES = {
    "en": [
        "The main idea is to keep each step small so that it can be tested on its own.",
        "A good first approach is to measure before optimizing anything.",
        "This function reads the file line by line and keeps only the valid records.",
        "You can think of a queue as a line of people waiting at a ticket counter.",
        "The weather in the mountains changes quickly, so pack a warm jacket.",
        "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
        "When the interest rate rises, borrowing money becomes more expensive.",
        "Start the essay with a question that makes the reader curious.",
        "Regular exercise improves sleep, mood and long-term health.",
        "The database index speeds up lookups at the cost of slower writes.",
        "In Python, a list comprehension builds a new list from an existing iterable.",
        "Remember to handle the case where the input is empty.",
        "The Roman Empire reached its largest size under the emperor Trajan.",
        "A balanced diet contains vegetables, whole grains, protein and healthy fats.",
        "Version control lets a team work on the same code without losing changes.",
    ],
    "fr": [
        "La meilleure façon d'apprendre une langue est de la pratiquer tous les jours.",
        "Cette fonction lit le fichier ligne par ligne et garde les lignes valides.",
        "Le train pour Lyon part à huit heures depuis la gare de Lyon à Paris.",
        "Il faut toujours vérifier les données avant de les analyser.",
        "Je vous conseille de commencer par une introduction courte et claire.",
    ],
    "es": [
        "La mejor manera de aprender a programar es escribir código todos los días.",
        "Esta receta necesita harina, huevos, leche y una pizca de sal.",
        "El museo abre a las diez de la mañana y cierra los lunes.",
        "Primero debes instalar las dependencias y luego ejecutar las pruebas.",
        "Los árboles absorben dióxido de carbono y producen oxígeno.",
    ],
    "de": [
        "Der einfachste Weg ist, das Problem in kleinere Teile zu zerlegen.",
        "Diese Funktion liest die Datei Zeile für Zeile und prüft jeden Eintrag.",
        "Im Winter ist es in Berlin oft kalt und grau.",
        "Bitte speichern Sie die Datei, bevor Sie das Programm schließen.",
        "Eine gute Präsentation beginnt mit einer klaren Frage.",
    ],
    "zh": [
        "学习编程最好的方法是每天写一点代码。",
        "这个函数逐行读取文件，并只保留有效的记录。",
        "北京的冬天很冷，但是天空常常很蓝。",
        "请先安装依赖，然后再运行测试。",
        "健康的饮食包括蔬菜、水果和足够的蛋白质。",
    ],
    "ko": [
        "프로그래밍을 배우는 가장 좋은 방법은 매일 조금씩 코드를 작성하는 것입니다.",
        "이 함수는 파일을 한 줄씩 읽고 올바른 기록만 남깁니다.",
        "서울의 겨울은 춥지만 하늘은 자주 맑습니다.",
        "먼저 의존성을 설치한 다음 테스트를 실행하세요.",
        "규칙적인 운동은 수면과 기분을 개선합니다.",
    ],
    "ja": [
        "プログラミングを学ぶ一番の方法は、毎日少しずつコードを書くことです。",
        "この関数はファイルを一行ずつ読み込み、正しい記録だけを残します。",
        "東京の春は桜がとても美しいです。",
        "まず依存関係をインストールしてから、テストを実行してください。",
    ],
    "ru": [
        "Лучший способ выучить язык — говорить на нём каждый день.",
        "Эта функция читает файл построчно и сохраняет только правильные записи.",
        "Зимой в Москве холодно, но очень красиво.",
        "Сначала установите зависимости, а затем запустите тесты.",
    ],
}
QUESTIONS = {
    "en": ["How do I read a large CSV file in Python without running out of memory?",
           "Can you explain how compound interest works with an example?",
           "Write a short story about a robot who learns to paint.",
           "What are the pros and cons of remote work for a small company?",
           "Give me a plan to train for a 10 km run in eight weeks.",
           "Explain the difference between a process and a thread.",
           "How can I make my resume stand out for a data analyst job?",
           "Summarize the causes of the French Revolution.",
           "continue", "Can you make it shorter?", "Thanks! Now add error handling.",
           "What would change if the input were sorted?"],
    "fr": ["Comment puis-je améliorer mon français écrit rapidement ?",
           "Peux-tu m'expliquer comment fonctionne une base de données ?"],
    "es": ["¿Cómo puedo preparar una paella tradicional para seis personas?",
           "¿Puedes explicarme qué es una función recursiva?"],
    "de": ["Wie kann ich meine Zeit beim Lernen besser einteilen?",
           "Kannst du mir erklären, wie eine Datenbank funktioniert?"],
    "zh": ["如何用Python读取一个很大的文件？", "你能解释一下什么是递归吗？"],
    "ko": ["파이썬으로 큰 파일을 읽으려면 어떻게 해야 하나요?", "재귀 함수가 무엇인지 설명해 주세요."],
    "ja": ["Pythonで大きなファイルを読むにはどうすればいいですか？"],
    "ru": ["Как прочитать большой файл на Python?", "Объясни, что такое рекурсия."],
}
#: Requests that come with pasted text (the question itself would not be about it).
PASTE_TASKS = {
    "en": ["Summarize this text:", "Proofread this paragraph:", "Make this shorter:",
           "What is the main point of this text?"],
    "fr": ["Résume ce texte :", "Corrige ce paragraphe :"],
    "es": ["Resume este texto:", "Corrige este párrafo:"],
    "de": ["Fasse diesen Text zusammen:", "Korrigiere diesen Absatz:"],
    "zh": ["请总结这段文字：", "请修改这段话："],
    "ko": ["이 글을 요약해 주세요:", "이 문단을 고쳐 주세요:"],
    "ja": ["この文章を要約してください：", "この段落を直してください："],
    "ru": ["Кратко перескажи этот текст:", "Исправь этот абзац:"],
}
LANG_WEIGHTS = [("en", 80), ("zh", 5), ("es", 4), ("fr", 3), ("de", 3), ("ko", 2),
                ("ja", 2), ("ru", 1)]

CODE_SNIPPETS = [
    ("python", "import csv\n\ndef read_rows(path):\n    with open(path, newline=\"\") as f:\n"
               "        for row in csv.DictReader(f):\n            if row[\"amount\"]:\n"
               "                yield row\n\ntotal = sum(float(r[\"amount\"]) for r in read_rows(\"data.csv\"))\n"
               "print(f\"total: {total:.2f}\")"),
    ("javascript", "function debounce(fn, ms) {\n  let timer;\n  return (...args) => {\n"
                   "    clearTimeout(timer);\n    timer = setTimeout(() => fn(...args), ms);\n  };\n}"),
    ("sql", "SELECT customer_id, SUM(amount) AS total\nFROM orders\nWHERE created_at >= '2023-01-01'\n"
            "GROUP BY customer_id\nHAVING SUM(amount) > 100\nORDER BY total DESC;"),
    ("bash", "for f in *.log; do\n  gzip -9 \"$f\" && echo \"compressed $f\"\ndone"),
    ("html", "<div class=\"card\">\n  <h2>Title</h2>\n  <p>Some text & more</p>\n</div>"),
    ("go", "func sum(xs []int) int {\n\ttotal := 0\n\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn total\n}"),
]
ERRORS = [
    "Too many requests in 1 hour. Try again later.",
    "!Too many requests in 1 hour. Try again later.",
    "An error occurred. If this issue persists please contact us through our help center at help.openai.com.",
    "Something went wrong, please try reloading the conversation.",
    "network error",
]


def _span_code(code: str) -> str:
    """Highlighted code as ChatGPT rendered it: tokens wrapped in hljs spans."""
    out = []
    for i, word in enumerate(code.split(" ")):
        esc = html.escape(word, quote=False)
        out.append(f'<span class="hljs-keyword">{esc}</span>' if i % 3 == 0 and esc else esc)
    return " ".join(out)


def code_block(lang: str, code: str) -> str:
    return (
        '<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center relative '
        'text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans"><span class="">'
        f'{lang}</span><button class="flex ml-auto gap-2"><svg stroke="currentColor" '
        'fill="none"></svg>Copy code</button></div><div class="p-4 overflow-y-auto">'
        f'<code class="!whitespace-pre hljs language-{lang}">{_span_code(code)}</code>'
        "</div></div></pre>"
    )


def _para(rng: random.Random, lang: str, k: int) -> str:
    return " ".join(rng.choice(SENTENCES[lang]) for _ in range(k))


def _answer(rng: random.Random, lang: str, size: float) -> str:
    blocks: list[str] = []
    n_blocks = max(1, int(rng.expovariate(1 / (4 * size))) + 1)
    for _ in range(n_blocks):
        kind = rng.random()
        if kind < 0.45:
            p = html.escape(_para(rng, lang, rng.randint(1, 5)), quote=False)
            if rng.random() < 0.3:
                p = p.replace(" ", " <strong>", 1).replace(".", ".</strong>", 1) \
                    if "." in p else p
            blocks.append(f"<p>{p}</p>")
        elif kind < 0.65:
            tag = "ol" if rng.random() < 0.6 else "ul"
            items = "".join(
                f"<li><p><strong>Step {j + 1}:</strong> "
                f"{html.escape(_para(rng, lang, rng.randint(1, 2)), quote=False)}</p></li>"
                for j in range(rng.randint(2, 6)))
            blocks.append(f"<{tag}>{items}</{tag}>")
        elif kind < 0.85 and lang == "en" or kind < 0.75:
            lang_c, code = rng.choice(CODE_SNIPPETS)
            blocks.append(code_block(lang_c, code))
        elif kind < 0.92:
            rows = "".join(f"<tr><td>item {j}</td><td>{rng.randint(1, 999)}</td>"
                           f"<td>{html.escape(rng.choice(SENTENCES[lang])[:30])}</td></tr>"
                           for j in range(rng.randint(2, 5)))
            blocks.append("<table><thead><tr><th>Name</th><th>Value</th><th>Note</th></tr>"
                          f"</thead><tbody>{rows}</tbody></table>")
        else:
            blocks.append(f"<h3>{html.escape(rng.choice(SENTENCES[lang])[:40])}</h3>"
                          f'<p>See <a href="https://example.com/{rng.randint(1, 99)}">'
                          "the documentation</a> for details.</p>")
    return PROSE_DIV + "".join(blocks) + "</div>"


def _question(rng: random.Random, lang: str) -> str:
    q = rng.choice(QUESTIONS[lang])
    if rng.random() < 0.3:  # pasted text, with a request that is about it
        q = PASTE_TASKS[lang][len(q) % len(PASTE_TASKS[lang])] + "\n\n" + \
            _para(rng, lang, rng.randint(1, 4))
    if rng.random() < 0.08:
        q = f"{rng.randint(1, 3)} / {rng.randint(3, 4)}{q}"
    if rng.random() < 0.05:
        q += " My template is <div class=\"box\">{{ name }}</div>, why is it empty?"
    return q


def conversation(rng: random.Random, idx: int) -> dict:
    lang = rng.choices([l for l, _ in LANG_WEIGHTS], [w for _, w in LANG_WEIGHTS])[0]
    r = rng.random()
    n_pairs = rng.randint(8, 30) if r < 0.08 else rng.randint(1, 4)
    size = 2.5 if rng.random() < 0.1 else 1.0
    turns: list[dict] = []
    for _ in range(n_pairs):
        turns.append({"from": "human", "value": _question(rng, lang)})
        turns.append({"from": "gpt", "value": _answer(rng, lang, size)})
    conv: dict = {"id": f"syn{idx:07d}_{rng.randrange(16 ** 4):04x}", "conversations": turns}
    x = rng.random()
    if x < 0.03:
        turns[-1]["value"] = rng.choice(ERRORS)
    elif x < 0.05:
        conv["plugins"] = [{"name": "WebPilot", "id": "plugin-abc"}]
    elif x < 0.07:
        turns.insert(0, {"from": "gpt", "value": _answer(rng, lang, 0.5)})  # leading gpt
    elif x < 0.09:
        turns.append({"from": "human", "value": _question(rng, lang)})  # trailing human
    elif x < 0.10:
        turns[1]["value"] = PROSE_DIV + "</div>"  # empty answer -> truncated there
    elif x < 0.11:
        turns[0]["value"] = "hi"
        turns[1]["value"] = PROSE_DIV + "<p>Hello!</p></div>"
        del turns[2:]
    elif x < 0.115:
        turns[min(2, len(turns) - 1)]["from"] = "gpt"  # roles out of order
    return conv


def generate(n: int, seed: int = 0, dup_rate: float = 0.03) -> list[dict]:
    """``n`` raw conversations; about ``dup_rate`` of them repeat an earlier one."""
    return list(iter_generate(n, seed, dup_rate))


def iter_generate(n: int, seed: int = 0, dup_rate: float = 0.03) -> Iterator[dict]:
    rng = random.Random(seed)
    made: list[dict] = []
    for i in range(n):
        if made and rng.random() < dup_rate:
            src = rng.choice(made)
            dup = json.loads(json.dumps(src))
            if rng.random() < 0.5:
                dup["id"] = f"syn{i:07d}_dup"  # same content, new id
            made.append(dup)
            yield dup
            continue
        conv = conversation(rng, i)
        if len(made) < 2000:
            made.append(conv)
        yield conv


def write_json(path: str, n: int, seed: int = 0, dup_rate: float = 0.03) -> str:
    """Write a JSON array of ``generate(n, seed)`` to ``path`` (atomically); return it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i, conv in enumerate(iter_generate(n, seed, dup_rate)):
            if i:
                f.write(",\n")
            f.write(json.dumps(conv, ensure_ascii=False))
        f.write("\n]\n")
    os.replace(tmp, path)
    return path
