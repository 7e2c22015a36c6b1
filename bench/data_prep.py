"""Data preparation: our pipeline vs FastChat's scripts, same input, same machine.

    python bench/data_prep.py [--n 20000] [--workers 2] [--fastchat-venv DIR] [--skip-fastchat]

1. Generates ``--n`` raw ShareGPT-style HTML conversations (vicuna_cloud.data.synthetic).
2. Installs FastChat (PyPI ``fschat==0.2.36``, plus markdownify, transformers<5,
   sentencepiece, polyglot/pycld2/PyICU for optional_clean) into its own virtual
   environment (default: $TMPDIR/vicuna-cloud-fastchat-venv), never into ours.
3. Runs FastChat's clean_sharegpt -> optional_clean (--skip-lang ko) ->
   split_long_conversation (same LLaMA SentencePiece tokenizer directory, max 2048), then
   ``vicuna-cloud data prepare --workers N --skip-lang ko`` on the same input.
4. Prints, per pipeline: wall seconds, CPU seconds (user+sys, all descendant processes),
   conversations/second (input conversations / wall), conversations per CPU-second,
   peak memory (sum of PSS over the process tree, sampled every 0.1 s, and the largest
   single process's max RSS), and the ratios.
5. Compares outputs conversation by conversation (FastChat's pieces grouped by source id)
   and classifies every difference.

The figures go into the data pipeline's closing note. This is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASTCHAT_PKGS = ["fschat==0.2.36", "markdownify==0.11.6", "beautifulsoup4", "tqdm",
                 "transformers>=4.40,<5", "sentencepiece", "protobuf"]
LANG_PKGS = ["polyglot", "pycld2", "PyICU"]


def ensure_fastchat(venv: str) -> tuple[str, bool]:
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        print(f"creating FastChat venv at {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    ok = subprocess.run([py, "-c", "import fastchat.data.clean_sharegpt, transformers, sentencepiece"],
                        capture_output=True).returncode == 0
    if not ok:
        print("installing " + " ".join(FASTCHAT_PKGS), flush=True)
        r = subprocess.run([py, "-m", "pip", "install", "-q", *FASTCHAT_PKGS])
        if r.returncode != 0:  # the pinned markdownify may be unavailable: take any
            subprocess.run([py, "-m", "pip", "install", "-q",
                            *[p for p in FASTCHAT_PKGS if not p.startswith("markdownify")],
                            "markdownify"], check=True)
    lang_ok = subprocess.run([py, "-c", "import polyglot.detect, pycld2"],
                             capture_output=True).returncode == 0
    if not lang_ok:
        subprocess.run([py, "-m", "pip", "install", "-q", *LANG_PKGS])
        lang_ok = subprocess.run([py, "-c", "from polyglot.detect import Detector; "
                                  "Detector('hello world, this is English text').language.code"],
                                 capture_output=True).returncode == 0
    return py, lang_ok


class Measured:
    def __init__(self, name: str):
        self.name = name
        self.wall = 0.0
        self.cpu = 0.0
        self.peak_pss = 0
        self.max_rss = 0

    def add(self, other: "Measured") -> None:
        self.wall += other.wall
        self.cpu += other.cpu
        self.peak_pss = max(self.peak_pss, other.peak_pss)
        self.max_rss = max(self.max_rss, other.max_rss)


def run_measured(name: str, cmd: list[str], log: str, env=None) -> Measured:
    """Run ``cmd``; wall, CPU of all descendants, peak PSS of the tree, max RSS."""
    import psutil

    m = Measured(name)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        stop = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not stop.is_set():
                total = 0
                try:
                    procs = [root] + root.children(recursive=True)
                except psutil.Error:
                    break
                for p in procs:
                    try:
                        total += p.memory_full_info().pss
                    except psutil.Error:
                        pass
                m.peak_pss = max(m.peak_pss, total)
                stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        # wait4: this child's own rusage (it includes the descendants it reaped), so
        # ru_maxrss is the largest process of this run, not of the whole benchmark.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        rc = proc.returncode
        stop.set()
        th.join()
    m.wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m.max_rss = usage.ru_maxrss * 1024  # KiB on Linux
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"{name} failed (exit {rc}); log {log}:\n{tail}")
    return m


# ---- output comparison ---------------------------------------------------------------
_ESC = re.compile(r"\\([_*\\`#\[\]()!<>+-.])")
_WS = re.compile(r"\s+")


def _norm_ws(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _strip_fences(s: str) -> str:
    return re.sub(r"```[^\n]*\n?", "```", s)


_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def _cosmetic(x: str) -> str:
    """Undo markdownify's style: escapes, '*' bullets, fence labels, paragraph spacing."""
    x = _ESC.sub(r"\1", x)
    x = re.sub(r"^(\s*)\* ", r"\1- ", x, flags=re.M)
    x = _strip_fences(x)
    return _norm_ws(x)


def classify(fc: list[dict], ours: list[dict]) -> str:
    """Why FastChat's text and ours differ for one source conversation (first rule wins).

    Deliberate differences: we keep user-typed text verbatim (FastChat ran markdownify on
    human turns too: paragraph breaks collapsed, HTML the user typed deleted), we do not
    backslash-escape markdown, we write '-' bullets and honour <ol start>, and our
    splitter never drops the last pair.
    """
    ft = [t["value"] for t in fc]
    ot = [t["value"] for t in ours]
    if ft == ot:
        return "identical"
    n = min(len(ft), len(ot))
    if len(ft) != len(ot):
        same_prefix = [_cosmetic(_TAG.sub("", x)) for x in ft[:n]] == \
            [_cosmetic(_TAG.sub("", x)) for x in ot[:n]]
        if len(ft) < len(ot) and same_prefix:
            return "FastChat's splitter lost the last pair(s) (+ cosmetic differences)"
        return "different turns (split/truncation rules)" if same_prefix else \
            "different turns and text"
    if [_norm_ws(x) for x in ft] == [_norm_ws(x) for x in ot]:
        return "whitespace / paragraph breaks only (FastChat collapses user paragraphs)"
    if [_cosmetic(x) for x in ft] == [_cosmetic(x) for x in ot]:
        return "markdown style: FastChat escapes \\_ \\*, '*' bullets, fence labels"
    if [_cosmetic(x) for x in ft] == [_cosmetic(_TAG.sub("", x)) for x in ot]:
        return "FastChat deleted HTML the user typed in a question (we keep it)"
    if [re.sub(r"\d+\.", "N.", _cosmetic(x)) for x in ft] == \
            [re.sub(r"\d+\.", "N.", _cosmetic(x)) for x in ot]:
        return "ordered list numbering (we honour <ol start>)"
    def no_marks(x: str) -> str:
        return _norm_ws(re.sub(r"[*_`|#>\-\\]", "", _strip_fences(_TAG.sub("", x))))
    if [no_marks(x) for x in ft] == [no_marks(x) for x in ot]:
        return "markdown markup (emphasis, tables, headings)"
    return "text differs otherwise"


def group_fastchat(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        src = r["id"].rsplit("_", 1)[0]
        out[src] += r["conversations"]
    return out


def group_ours(rows: list[dict], ids: set[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        rid = r["id"]
        src = rid if rid in ids else rid.rsplit("_", 1)[0]
        out[src] += r["conversations"]
    return out


def fmt_mb(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vicuna-bench-data"))
    ap.add_argument("--fastchat-venv",
                    default=os.path.join(tempfile.gettempdir(), "vicuna-cloud-fastchat-venv"))
    ap.add_argument("--skip-fastchat", action="store_true")
    ap.add_argument("--reuse-fastchat", action="store_true",
                    help="reuse FastChat's figures and output from an earlier run on the same "
                         "input in --workdir (it takes minutes); the table says so")
    args = ap.parse_args()

    sys.path.insert(0, REPO)
    from vicuna_cloud.data import synthetic
    from vicuna_cloud.tokenizer import resolve_tokenizer_path

    os.makedirs(args.workdir, exist_ok=True)
    raw = os.path.join(args.workdir, f"raw-{args.n}-{args.seed}.json")
    if not os.path.exists(raw):
        print(f"generating {args.n:,} raw conversations -> {raw}", flush=True)
        synthetic.write_json(raw, args.n, seed=args.seed)
    print(f"input: {raw} ({os.path.getsize(raw) / 2**20:,.1f} MiB, {args.n:,} conversations), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    tokdir = resolve_tokenizer_path("builtin:llama-sp")

    ours_out = os.path.join(args.workdir, "ours")
    ours = run_measured("ours", [sys.executable, "-m", "vicuna_cloud", "data", "prepare", raw,
                                 "--out", ours_out, "--force", "--workers", str(args.workers),
                                 "--skip-lang", "ko", "--max-length", str(args.max_length),
                                 "--json"],
                        os.path.join(args.workdir, "ours.log"))
    manifest = json.load(open(os.path.join(ours_out, "manifest.json")))

    fc = None
    lang_ran = False
    reused_at = None
    prev_path = os.path.join(args.workdir, "result.json")
    if args.reuse_fastchat and os.path.exists(prev_path):
        prev = json.load(open(prev_path))
        if prev.get("input_bytes", os.path.getsize(raw)) == os.path.getsize(raw) \
                and prev.get("n") == args.n and prev.get("fastchat") \
                and os.path.exists(os.path.join(args.workdir, "fc_split.json")):
            fc = Measured("fastchat")
            fc.__dict__.update(prev["fastchat"])
            lang_ran = prev.get("fastchat_lang_ran", True)
            reused_at = prev.get("measured_at", "an earlier run")
            print(f"FastChat figures reused from {reused_at}", flush=True)
    if fc is None and not args.skip_fastchat:
        py, lang_ok = ensure_fastchat(args.fastchat_venv)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        d = args.workdir
        fc = Measured("fastchat")
        steps = [("clean_sharegpt", ["-m", "fastchat.data.clean_sharegpt", "--in-file", raw,
                                     "--out-file", f"{d}/fc_clean.json"], f"{d}/fc_clean.json")]
        last = f"{d}/fc_clean.json"
        if lang_ok:
            steps.append(("optional_clean", ["-m", "fastchat.data.optional_clean", "--in-file",
                                             last, "--out-file", f"{d}/fc_lang.json",
                                             "--skip-lang", "ko"], f"{d}/fc_lang.json"))
            last = f"{d}/fc_lang.json"
            lang_ran = True
        else:
            print("optional_clean skipped: polyglot/pycld2/PyICU could not be installed offline",
                  flush=True)
        steps.append(("split_long_conversation",
                      ["-m", "fastchat.data.split_long_conversation", "--in-file", last,
                       "--out-file", f"{d}/fc_split.json", "--model-name-or-path", tokdir,
                       "--max-length", str(args.max_length)], f"{d}/fc_split.json"))
        for name, cmd, _ in steps:
            m = run_measured(name, [py, *cmd], os.path.join(d, f"fc_{name}.log"), env=env)
            print(f"  fastchat {name}: {m.wall:,.1f} s wall, {m.cpu:,.1f} s CPU, "
                  f"peak PSS {fmt_mb(m.peak_pss)}", flush=True)
            fc.add(m)

    from rich.console import Console
    from rich.table import Table

    n = args.n
    t = Table(title=f"data preparation, {n:,} raw conversations, {os.cpu_count()} CPUs")
    for col in ("pipeline", "wall s", "CPU s", "conv/s", "conv/CPU-s", "peak PSS (tree)",
                "max RSS (1 proc)", "output pieces"):
        t.add_column(col, justify="right" if col != "pipeline" else "left")
    t.add_row(f"vicuna-cloud (--workers {args.workers})", f"{ours.wall:,.1f}",
              f"{ours.cpu:,.1f}", f"{n / ours.wall:,.0f}", f"{n / ours.cpu:,.0f}",
              fmt_mb(ours.peak_pss), fmt_mb(ours.max_rss), f"{manifest['counts']['split_pieces']:,}")
    result = {"n": n, "cpus": os.cpu_count(), "ours": vars(ours),
              "ours_counts": manifest["counts"], "input_bytes": os.path.getsize(raw),
              "measured_at": reused_at or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "fastchat_lang_ran": lang_ran}
    if fc is not None:
        fc_rows = json.load(open(f"{args.workdir}/fc_split.json"))
        t.add_row("FastChat 0.2.36" + (" (no optional_clean)" if not lang_ran else "")
                  + (f" [reused: {reused_at}]" if reused_at else ""),
                  f"{fc.wall:,.1f}", f"{fc.cpu:,.1f}", f"{n / fc.wall:,.0f}",
                  f"{n / fc.cpu:,.0f}", fmt_mb(fc.peak_pss), fmt_mb(fc.max_rss),
                  f"{len(fc_rows):,}")
        t.add_row("ratio (ours / FastChat)", f"{ours.wall / fc.wall:.3f}",
                  f"{ours.cpu / fc.cpu:.3f}", f"{fc.wall / ours.wall:.1f}x",
                  f"{fc.cpu / ours.cpu:.1f}x", f"{ours.peak_pss / fc.peak_pss:.2f}",
                  f"{ours.max_rss / fc.max_rss:.2f}", "")
        result.update(fastchat=vars(fc), speedup_wall=fc.wall / ours.wall,
                      speedup_cpu=fc.cpu / ours.cpu, pss_ratio=ours.peak_pss / fc.peak_pss)
    Console().print(t)

    if fc is not None:
        with open(os.path.join(ours_out, "train.jsonl")) as f:
            our_rows = [json.loads(x) for x in f]
        raw_ids = {c["id"] for c in json.load(open(raw))}
        g_fc = group_fastchat(fc_rows)
        g_ours = group_ours(our_rows, raw_ids)
        both = sorted(set(g_fc) & set(g_ours))
        classes = Counter(classify(g_fc[i], g_ours[i]) for i in both)
        only_fc = set(g_fc) - set(g_ours)
        only_ours = set(g_ours) - set(g_fc)
        dropped_by_us = Counter()
        # Why we dropped what FastChat kept: re-run our cleaner on those raw conversations.
        from vicuna_cloud.data.filters import FilterOptions, clean_conversation
        by_id = {}
        for c in json.load(open(raw)):
            by_id.setdefault(c["id"], c)
        for i in only_fc:
            c = clean_conversation(by_id[i], i, FilterOptions())
            dropped_by_us[c.reason or "duplicate/language/other"] += 1
        ct = Table(title="output comparison by source conversation")
        ct.add_column("class")
        ct.add_column("conversations", justify="right")
        for k, v in classes.most_common():
            ct.add_row(f"in both: {k}", f"{v:,}")
        for k, v in dropped_by_us.most_common():
            ct.add_row(f"only FastChat kept (we dropped: {k})", f"{v:,}")
        ct.add_row("only we kept", f"{len(only_ours):,}")
        Console().print(ct)
        result.update(compare={"both": dict(classes), "only_fastchat": dict(dropped_by_us),
                               "only_ours": len(only_ours)})
    with open(os.path.join(args.workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"figures: {os.path.join(args.workdir, 'result.json')}")


if __name__ == "__main__":
    main()
