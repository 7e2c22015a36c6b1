"""``prepare``: raw ShareGPT files in, ``train.jsonl`` + ``manifest.json`` out.

Order of steps (issue 3): read (streaming) -> clean HTML and filter (filters.py) ->
language -> decontaminate -> split at pair boundaries with the real tokenizer (split.py)
-> drop duplicate ids, then duplicate content (first human/gpt pair), first occurrence in
input order wins -> append --merge files (schema/role checks and splitting only: they are
curated) -> write. Per-conversation work runs in ``workers`` processes, each loading its
own tokenizer once, on chunks of conversations; duplicate checks and writing stay in the
parent so the output is identical for any worker count, in input order.

Output is written to a temp file and renamed; the old manifest is removed first and the
new one written last, so a directory never pairs a manifest with the wrong train.jsonl.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import orjson

from vicuna_cloud.data.filters import DEFAULT_BLOCKED_WORDS, Cleaned, FilterOptions, clean_conversation
from vicuna_cloud.data.manifest import (
    EVAL_FILE, MANIFEST_FILE, MANIFEST_VERSION, PIPELINE_VERSION, TRAIN_FILE, TokenStats,
    write_json_atomic,
)
from vicuna_cloud.data.reader import DEFAULT_MAX_RECORD_BYTES, DataError, InputFile, Malformed, Reader

ProgressFn = Callable[[int, int, int], None]  # (bytes read, total bytes, conversations)


@dataclass(frozen=True)
class PrepareOptions:
    tokenizer: str = "builtin:llama-sp"
    template: str = "vicuna_v1.1"
    max_length: int = 2048
    lang: str = "all"                    # "all" or an ISO code to keep ("en")
    skip_lang: tuple[str, ...] = ()      # ISO codes to drop ("ko")
    decontaminate: tuple[str, ...] = ()  # evaluation prompt JSONL files
    merge: tuple[str, ...] = ()          # curated conversation files appended as-is
    long_pair: str = "truncate"          # a single pair over max_length: truncate | drop
    blocked_words: tuple[str, ...] = DEFAULT_BLOCKED_WORDS
    assistant_roles: tuple[str, ...] = ()  # other assistants' roles kept as gpt ("bard")
    min_chars: int = 16
    eval_fraction: float = 0.0           # held out to eval.jsonl, by id hash (CLI: 0.02)
    eval_max: int = 300                  # never more held-out conversations than this
    workers: int = 0                     # 0: every usable core (FastChat's cleaner's pool)
    chunk_size: int = 128
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # one conversation; larger: too_large

    def for_manifest(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("workers")
        d.pop("chunk_size")
        if self.max_record_bytes == DEFAULT_MAX_RECORD_BYTES:  # manifests before it match
            d.pop("max_record_bytes")
        d["decontaminate"] = [os.path.abspath(p) for p in self.decontaminate]
        d["merge"] = [os.path.abspath(p) for p in self.merge]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class ConvResult:
    """What a worker sends back for one input conversation."""

    id: str
    reason: Optional[str] = None
    truncated: bool = False
    content_key: bytes = b""   # 8-byte hash of each human/gpt pair, concatenated
    lines: list[bytes] = field(default_factory=list)     # serialized pieces
    tokens: list[tuple[int, int, bool]] = field(default_factory=list)  # (total, assistant, over)
    dropped_pairs: int = 0
    curated: bool = False      # from a --merge file: always trained, never held out
    removed_turns: dict[str, int] = field(default_factory=dict)  # by reason (filters.py)
    identity: bool = False     # dropped for blocked words, and looks like identity data


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as under taskset or a
    container's cpuset), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


#: With ``workers`` left at 0, inputs smaller than this are prepared in one process:
#: starting a pool costs more than it saves.
POOL_MIN_BYTES = 4 << 20


def worker_count(opts: "PrepareOptions", input_bytes: int) -> int:
    """How many processes prepare uses: ``opts.workers`` (0 = every usable core), one for
    small inputs when it was not set."""
    if opts.workers:
        return opts.workers
    return 1 if input_bytes < POOL_MIN_BYTES else usable_cores()


def held_out(conv_id: str, fraction: float) -> bool:
    """Deterministic eval membership: the id's hash, not its position or the run's seed,
    so the same conversation is held out in every prepare of any dump that holds it."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(conv_id.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2**64


@dataclass
class PrepareResult:
    out_dir: str
    manifest: dict[str, Any]
    seconds: float


# ---- worker side ---------------------------------------------------------------------
class _Worker:
    """Per-process state: tokenizer, template, filters, language and decontamination."""

    def __init__(self, opts: PrepareOptions, prompts: list[str], tok_json: str | None = None,
                 tok=None):
        from vicuna_cloud.data.decontaminate import Decontaminator
        from vicuna_cloud.data.split import Splitter
        from vicuna_cloud.templates import get_template
        from vicuna_cloud.tokenizer import eos_token

        self.opts = opts
        roles = tuple(r.strip().lower() for r in opts.assistant_roles)
        self.filters = FilterOptions(blocked_words=tuple(opts.blocked_words),
                                     min_chars=opts.min_chars, assistant_roles=roles)
        self.merge_filters = FilterOptions(blocked_words=(), min_chars=1, drop_plugins=False,
                                           check_lists=False, assistant_roles=roles)
        if tok is not None:  # the parent's own (same process, or inherited by fork)
            pass
        elif tok_json is not None:  # from the parent: no transformers import, no conversion
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(tok_json)
        else:
            from vicuna_cloud.data.tokenizer_cache import load_backend

            tok = load_backend(opts.tokenizer)
        # Lengths of the text the trainer renders: the reply stop is this base's EOS.
        self.splitter = Splitter(tok, get_template(opts.template, eos=eos_token(opts.tokenizer)),
                                 opts.max_length, opts.long_pair)
        self.decon = Decontaminator(prompts) if prompts else None
        self.lang_filter = opts.lang != "all" or bool(opts.skip_lang)

    def warm(self) -> None:
        """Load the language model now (before forking workers that share it)."""
        if self.lang_filter:
            from vicuna_cloud.data.language import _predict

            _predict()

    def process(self, chunk: list[tuple[str, bool, Any]]) -> list[ConvResult]:
        from vicuna_cloud.data.language import conversation_text, detect_languages

        results: list[ConvResult] = []
        cleaned: list[tuple[ConvResult, Cleaned, bool]] = []
        for fallback_id, curated, item in chunk:
            c = clean_conversation(item, fallback_id,
                                   self.merge_filters if curated else self.filters)
            r = ConvResult(c.id, c.reason, c.truncated, curated=curated,
                           removed_turns=c.removed, identity=c.identity)
            results.append(r)
            if not c.reason:
                cleaned.append((r, c, curated))
        langs: dict[int, str] = {}
        if self.lang_filter:  # all of the chunk at once (see detect_languages)
            todo = [k for k, (_, _, curated) in enumerate(cleaned) if not curated]
            langs = dict(zip(todo, detect_languages(
                [conversation_text(cleaned[k][1].turns) for k in todo])))
        keep: list[tuple[ConvResult, Cleaned]] = []
        for k, (r, c, curated) in enumerate(cleaned):
            lang = langs.get(k)
            if lang is not None:
                if (self.opts.lang != "all" and lang != self.opts.lang) \
                        or lang in self.opts.skip_lang:
                    r.reason = "language"
                    continue
            if not curated and self.decon is not None \
                    and self.decon.contaminated(c.turns) is not None:
                r.reason = "contaminated"
                continue
            r.content_key = _pair_hashes(c.turns)
            keep.append((r, c))
        if keep:
            splits = self.splitter.split_batch([c.turns for _, c in keep])
            for (r, c), s in zip(keep, splits):
                r.dropped_pairs = s.dropped_pairs
                many = len(s.pieces) > 1
                for k, p in enumerate(s.pieces):
                    pid = f"{c.id}_{k}" if many else c.id
                    r.lines.append(orjson.dumps({"id": pid, "conversations": p.turns}))
                    r.tokens.append((p.tokens, p.assistant_tokens, p.over_length))
                if not s.pieces:
                    r.reason = "pair_too_long"
        return results


def _pair_hashes(turns: list[dict[str, str]]) -> bytes:
    out = []
    for i in range(0, len(turns) - 1, 2):
        pair = " ".join(turns[i]["value"].split()) + "\x00" + " ".join(turns[i + 1]["value"].split())
        out.append(hashlib.blake2b(pair.encode("utf-8"), digest_size=8).digest())
    return b"".join(out)


class ContentDeduper:
    """Duplicate content: same first human/gpt pair *and* one conversation is a prefix of
    the other (the same chat shared twice, at different lengths). Conversations that only
    open the same way ("What is up?" / "Hello! How can I help you today?") but go on
    differently are kept; FastChat's first-pair key dropped them."""

    def __init__(self) -> None:
        self.by_first: dict[bytes, list[bytes]] = {}

    def seen(self, key: bytes) -> bool:
        for other in self.by_first.get(key[:8], ()):
            if other.startswith(key) or key.startswith(other):
                return True
        return False

    def add(self, key: bytes) -> None:
        self.by_first.setdefault(key[:8], []).append(key)


_STATE: Optional[_Worker] = None


def _init_worker(opts: PrepareOptions, prompts: list[str], tok_json: str | None) -> None:
    global _STATE
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
    if _STATE is None:  # spawn; with fork the parent's state is inherited
        _STATE = _Worker(opts, prompts, tok_json)


def _run_chunk(chunk):
    assert _STATE is not None
    return _STATE.process(chunk)


def _shared_results(pool, worker: _Worker, chunks: Iterable[list],
                    queued: int) -> Iterator[list[ConvResult]]:
    """Chunk results in input order; chunks go to ``pool`` while it holds fewer than
    ``queued`` unfinished ones, otherwise this process handles them."""
    from collections import deque

    pending: deque = deque()  # list (done here) or AsyncResult, in input order
    in_pool = 0
    for chunk in chunks:
        if in_pool < queued:
            pending.append(pool.apply_async(_run_chunk, (chunk,)))
            in_pool += 1
        else:
            pending.append(worker.process(chunk))
        while pending and (isinstance(pending[0], list) or pending[0].ready()):
            head = pending.popleft()
            if not isinstance(head, list):
                in_pool -= 1
                head = head.get()
            yield head
        if in_pool:  # count finished ones further back as free slots
            in_pool = sum(1 for p in pending if not isinstance(p, list) and not p.ready())
    while pending:
        head = pending.popleft()
        yield head if isinstance(head, list) else head.get()


# ---- parent side ---------------------------------------------------------------------
def _check_out_dir(out_dir: str, inputs: list[str], opts: PrepareOptions, force: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"--out {out_dir} is a file; give a directory")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir) or force:
        return
    mpath = os.path.join(out_dir, MANIFEST_FILE)
    same = False
    if os.path.isfile(mpath):
        try:
            with open(mpath, encoding="utf-8") as f:
                old = orjson.loads(f.read())
            same = (
                old.get("pipeline_version") == PIPELINE_VERSION
                and old.get("options") == opts.for_manifest()
                and [(i["path"], i["bytes"]) for i in old.get("inputs", [])]
                == [(os.path.abspath(p), os.path.getsize(p)) for p in inputs]
            )
        except (OSError, ValueError, KeyError, TypeError):
            same = False
    if not same:
        raise DataError(
            f"--out {out_dir} is not empty and holds a different dataset; choose another "
            "directory or pass --force to replace its train.jsonl and manifest.json"
        )


def _chunks(items: Iterable[tuple[str, bool, Any]], size: int) -> Iterator[list]:
    buf: list = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _check(inputs: list[str], opts: PrepareOptions):
    """Every input check, in the parent, before any work: (tokenizer backend, prompts)."""
    from vicuna_cloud.data.decontaminate import load_prompts
    from vicuna_cloud.data.split import fast_backend
    from vicuna_cloud.data.tokenizer_cache import load_backend
    from vicuna_cloud.templates import TemplateError, get_template
    from vicuna_cloud.tokenizer import TokenizerNotFound

    if not inputs:
        raise DataError("no input files; give one or more raw .json/.jsonl files")
    for p in list(inputs) + list(opts.merge):
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file")
    if opts.lang != "all" and (len(opts.lang) < 2 or not opts.lang.isalpha()):
        raise DataError(f"--lang {opts.lang!r}: give an ISO 639-1 code like 'en', or 'all'")
    if opts.workers < 0:
        raise DataError(f"--workers {opts.workers}: give 1 or more (0 = every usable core)")
    if opts.max_length < 16:
        raise DataError(f"--max-length {opts.max_length} is too small; use at least 16")
    if not 0 <= opts.eval_fraction < 1:
        raise DataError(f"--eval-fraction {opts.eval_fraction}: give a fraction in [0, 1), "
                        "e.g. 0.02")
    if opts.eval_max < 0:
        raise DataError(f"--eval-max {opts.eval_max}: give 0 or more")
    if opts.long_pair not in ("truncate", "drop"):
        raise DataError(f"--long-pair {opts.long_pair!r}: choose 'truncate' or 'drop'")
    try:
        get_template(opts.template)
    except TemplateError as e:
        raise DataError(str(e)) from None
    try:  # fail fast, in the parent, with the fix-it message
        tok = fast_backend(load_backend(opts.tokenizer), copy=False)
    except TokenizerNotFound as e:
        raise DataError(str(e)) from None
    prompts = load_prompts(list(opts.decontaminate)) if opts.decontaminate else []
    return tok, prompts


def _start_workers(opts: PrepareOptions, prompts: list[str], tok, chunks: Iterator[list],
                   workers: int):
    """(results iterator, pool or None): one process, or ``workers`` processes."""
    global _STATE
    if workers <= 1:
        worker = _Worker(opts, prompts, tok=tok)
        return map(worker.process, chunks), None
    methods = mp.get_all_start_methods()
    fork = "fork" in methods
    ctx = mp.get_context("fork" if fork else "spawn")
    if not fork:
        pool = ctx.Pool(workers, initializer=_init_worker,
                        initargs=(opts, prompts, tok.to_str()))
        return pool.imap(_run_chunk, chunks), pool
    _STATE = _Worker(opts, prompts, tok=tok)  # build once here; shared copy-on-write
    _STATE.warm()
    # N workers = this process + N-1 children: the parent processes a chunk itself
    # whenever the children have enough queued, so one process per core and only part
    # of the data crosses a pipe.
    pool = ctx.Pool(workers - 1, initializer=_init_worker, initargs=(opts, prompts, None))
    return _shared_results(pool, _STATE, chunks, 2 * (workers - 1)), pool


class _Writer:
    """Counts, de-duplicates and writes the workers' results to train.jsonl, hashing the
    bytes as they are written."""

    def __init__(self, opts: PrepareOptions) -> None:
        self.opts = opts
        self.counts: dict[str, Any] = {
            "input": 0, "kept": 0, "dropped": {}, "split_pieces": 0, "split_conversations": 0,
            "truncated": 0, "kept_for_truncation": 0, "dropped_pairs": 0, "merged": 0,
            "eval_conversations": 0, "eval_pieces": 0,
            "train_over_length": 0, "train_tokens_after_truncation": 0,
            "removed_turns": {}, "blocked_identity": 0}
        self.dropped: dict[str, int] = self.counts["dropped"]
        self.stats = TokenStats()
        self.eval_stats = TokenStats()   # the held-out split (--eval-fraction)
        self.eval_lines: list[bytes] = []
        self.seen_ids: set[str] = set()
        self.seen_content = ContentDeduper()
        self.h = hashlib.sha256()
        self.bytes = 0

    def _take(self, r, buf: list[bytes]) -> None:
        c = self.counts
        c["input"] += 1
        reason = r.reason
        if reason is None:
            if r.id in self.seen_ids:
                reason = "duplicate_id"
            elif self.seen_content.seen(r.content_key):
                reason = "duplicate_content"
        if reason is not None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            c["blocked_identity"] += reason == "blocked_words" and r.identity
            return
        removed = c["removed_turns"]
        for why, n in r.removed_turns.items():
            removed[why] = removed.get(why, 0) + n
        self.seen_ids.add(r.id)
        self.seen_content.add(r.content_key)
        c["kept"] += 1
        c["truncated"] += r.truncated
        c["dropped_pairs"] += r.dropped_pairs
        c["split_conversations"] += len(r.lines) > 1
        o = self.opts
        evaluated = (not r.curated and c["eval_conversations"] < o.eval_max
                     and held_out(r.id, o.eval_fraction))
        c["eval_conversations"] += evaluated
        for line, (tok, asst, over) in zip(r.lines, r.tokens):
            (self.eval_lines if evaluated else buf).append(line)
            (self.eval_stats if evaluated else self.stats).add(tok, asst)
            c["eval_pieces" if evaluated else "split_pieces"] += 1
            c["kept_for_truncation"] += over
            if not evaluated:  # what the trainer will count after its cut
                c["train_over_length"] += tok > o.max_length
                c["train_tokens_after_truncation"] += min(tok, o.max_length)

    def write(self, results, path: str, on_batch: Callable[[], None]) -> None:
        with open(path, "wb") as out:
            buf: list[bytes] = []
            for batch in results:
                for r in batch:
                    self._take(r, buf)
                if buf:  # one write and one hash update per batch
                    buf.append(b"")
                    data = b"\n".join(buf)
                    buf.clear()
                    out.write(data)
                    self.h.update(data)
                    self.bytes += len(data)
                on_batch()
            out.flush()
            os.fsync(out.fileno())


def prepare(inputs: list[str], out_dir: str, opts: PrepareOptions = PrepareOptions(),
            force: bool = False, progress: Optional[ProgressFn] = None) -> PrepareResult:
    """Run the whole pipeline. Raises DataError (one line, fix-it) on bad input."""
    global _STATE
    t0 = time.perf_counter()
    tok, prompts = _check(inputs, opts)
    _check_out_dir(out_dir, inputs, opts, force)
    os.makedirs(out_dir, exist_ok=True)

    if opts.max_record_bytes < 1024:
        raise DataError(f"--max-record-mb: {opts.max_record_bytes} bytes is too small")
    reader = Reader(list(inputs), max_record_bytes=opts.max_record_bytes)
    merge_reader = Reader(list(opts.merge), max_record_bytes=opts.max_record_bytes)
    total_bytes = sum(os.path.getsize(p) for p in list(inputs) + list(opts.merge))
    malformed: list[dict[str, str]] = []  # the first few, so the user can find them

    def items() -> Iterator[tuple[str, bool, Any]]:
        for curated, r in ((False, reader), (True, merge_reader)):
            for path, idx, item in r:
                if isinstance(item, Malformed) and len(malformed) < 20:
                    malformed.append({"reason": item.reason, "where": item.where,
                                      "detail": item.detail})
                yield f"{os.path.basename(path)}:{idx}", curated, item

    w = _Writer(opts)

    def on_batch() -> None:
        if progress:
            done = sum(f.bytes or 0 for f in reader.files) + \
                sum(f.bytes or 0 for f in merge_reader.files)
            progress(min(done, total_bytes), total_bytes, w.counts["input"])

    out_path = os.path.join(out_dir, TRAIN_FILE)
    tmp_path = os.path.join(out_dir, f".{TRAIN_FILE}.tmp-{os.getpid()}")
    pool = None
    try:
        results, pool = _start_workers(opts, prompts, tok, _chunks(items(), opts.chunk_size),
                                       worker_count(opts, total_bytes))
        w.write(results, tmp_path, on_batch)
        manifest = _manifest(inputs, opts, reader, merge_reader, w, malformed)
        eval_entry = _write_eval(out_dir, w.eval_lines, w.eval_stats)
        if eval_entry:
            manifest["eval"] = eval_entry
        mpath = os.path.join(out_dir, MANIFEST_FILE)
        if os.path.exists(mpath):
            os.unlink(mpath)  # no manifest = incomplete directory
        os.replace(tmp_path, out_path)
        write_json_atomic(mpath, manifest)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
            _STATE = None
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    return PrepareResult(out_dir, manifest, time.perf_counter() - t0)


def _manifest(inputs: list[str], opts: PrepareOptions, reader: Reader, merge_reader: Reader,
              w: _Writer, malformed: Optional[list] = None) -> dict[str, Any]:
    """manifest.json (schema in data/manifest.py), after the sanity checks of the counts."""
    counts = w.counts
    n_main = sum(f.conversations for f in reader.files)
    counts["merged"] = counts["input"] - n_main
    if counts["input"] == 0:
        raise DataError(f"{', '.join(inputs)}: no conversations in the input")
    if counts["split_pieces"] == 0:
        first = (f"; first malformed record at {malformed[0]['where']} "
                 f"({malformed[0]['reason']}: {malformed[0]['detail'][:80]})"
                 if malformed else "")
        raise DataError(
            f"no conversation survived cleaning (dropped: {_fmt_dropped(w.dropped)}){first}; "
            "check the input format or loosen --lang/--skip-lang/--max-length"
        )
    assert counts["input"] == counts["kept"] + sum(w.dropped.values())
    return {
        "manifest_version": MANIFEST_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [_file_entry(f) for f in reader.files],
        "merged": [_file_entry(f) for f in merge_reader.files],
        "options": opts.for_manifest(),
        "tokenizer": opts.tokenizer,
        "template": opts.template,
        "max_length": opts.max_length,
        "counts": counts,
        "malformed_examples": list(malformed or []),
        "conversations": counts["kept"] - counts["eval_conversations"],
        "samples": counts["split_pieces"],
        "tokens": w.stats.summary(),
        "output": {"file": TRAIN_FILE, "sha256": w.h.hexdigest(), "bytes": w.bytes},
        "stop": _stop_string(opts),
        "warnings": _warnings(counts, opts),
    }


def _warnings(counts: dict[str, Any], opts: PrepareOptions) -> list[str]:
    """What the user should know about the result (the CLI prints them)."""
    out = []
    n = counts.get("blocked_identity", 0)
    if n:
        out.append(
            f"--blocked-words dropped {n} conversation{'s' if n != 1 else ''} that look like "
            "identity data (\"Who are you?\" -> \"I am ...\"); the model learns its name "
            "from such data: put yours in a file given to --merge (curated conversations, "
            "not filtered for blocked words)")
    return out


def _write_eval(out_dir: str, lines: list[bytes], stats: TokenStats) -> Optional[dict]:
    """eval.jsonl (atomically); None, and no file, when nothing is held out."""
    path = os.path.join(out_dir, EVAL_FILE)
    if not lines:
        if os.path.exists(path):
            os.unlink(path)
        return None
    data = b"\n".join(lines) + b"\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return {"file": EVAL_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "samples": len(lines), "tokens": stats.summary()}


def _stop_string(opts: PrepareOptions) -> str:
    """The reply stop the pieces were measured with (the tokenizer's EOS for v1.1)."""
    from vicuna_cloud.templates import get_template
    from vicuna_cloud.tokenizer import eos_token

    return get_template(opts.template, eos=eos_token(opts.tokenizer)).sep2


def _file_entry(f: InputFile) -> dict[str, Any]:
    return {"path": f.path, "sha256": f.sha256, "bytes": f.bytes, "conversations": f.conversations}


def _fmt_dropped(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"
