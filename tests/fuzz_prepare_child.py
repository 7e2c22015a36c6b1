"""Child of test_data_fuzz.py: hypothesis drives `prepare` in this process under an
address-space limit (RLIMIT_AS), with nesting and size attacks mixed into valid data.

Prints one JSON line: examples run, baseline and peak RSS (MiB), failures (tracebacks).
Any exception other than DataError is a failure; so is a MemoryError (the limit hit).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import traceback

LIMIT_GB = float(os.environ.get("FUZZ_AS_LIMIT_GB", "6"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
MAX_RECORD = 1 << 20


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    resource.setrlimit(resource.RLIMIT_AS, (int(LIMIT_GB * 2**30), int(LIMIT_GB * 2**30)))
    from hypothesis import HealthCheck, given, settings, strategies as st

    from vicuna_cloud.data.pipeline import PrepareOptions, prepare
    from vicuna_cloud.data.reader import DataError

    work = tempfile.mkdtemp(prefix="fuzz-prepare-")
    opts = PrepareOptions(max_record_bytes=MAX_RECORD, min_chars=1)
    good = {"id": "g", "conversations": [{"from": "human", "value": "What is a vicuna?"},
                                         {"from": "gpt", "value": "A South American camelid."}]}
    warm = os.path.join(work, "warm.json")
    with open(warm, "w") as f:
        json.dump([good], f)
    prepare([warm], os.path.join(work, "out-warm"), opts, force=True)
    baseline = rss_mib()
    failures: list[str] = []
    count = [0]

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
    conv = st.builds(lambda a, b, i: json.dumps({"id": i, "conversations": [
        {"from": "human", "value": a}, {"from": "gpt", "value": b}]}).encode(), text, text,
        st.text(max_size=8))
    # Big attacks are (kind, n) and streamed to the file, so the peak is prepare's own.
    attack = st.one_of(
        st.tuples(st.sampled_from(["nest", "nest_obj", "open", "big", "escapes"]),
                  st.integers(1, 300_000)),
        st.tuples(st.just("big"), st.integers(MAX_RECORD // 2, 20 * MAX_RECORD)),
        st.tuples(st.just("escapes"), st.integers(MAX_RECORD // 4, 3 * MAX_RECORD)),
        st.sampled_from([b"\x00", b"{}", b"[]", b'"s"', b"1", b"null", b'{"id":"\\ud800"}',
                         "{\"id\": \"caf\xe9\"}".encode("latin-1"), b"\xef\xbb\xbf{}",
                         b"{,}"]),
        st.binary(max_size=300),
    )
    record = st.one_of(conv, attack)

    def write_record(f, r) -> None:
        if isinstance(r, bytes):
            f.write(r)
            return
        kind, n = r
        pieces = {"nest": (b"[", b"", b"]"), "nest_obj": (b'{"a":', b"1", b"}"),
                  "open": (b"[", b"", b""), "big": (b"", b"x", b""),
                  "escapes": (b"", b'\\"', b"")}[kind]
        if kind in ("big", "escapes"):
            f.write(b'{"id": "')
        for part in pieces:
            left = n
            while left > 0:
                k = min(left, 1 << 16)
                f.write(part * k)
                left -= k
        if kind in ("big", "escapes"):
            f.write(b'"}')

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(record, min_size=1, max_size=6), st.booleans(), st.booleans(),
           st.booleans())
    def run(records, as_array, bom, truncate):
        count[0] += 1
        path = os.path.join(work, f"in.{'json' if as_array else 'jsonl'}")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" if bom else b"")
            f.write(b"[\n" if as_array else b"")
            for k, r in enumerate(records):
                if k:
                    f.write(b",\n" if as_array else b"\n")
                write_record(f, r)
            f.write(b"\n]" if as_array else b"\n")
        if truncate:  # a file cut short
            os.truncate(path, max(1, os.path.getsize(path) * 2 // 3))
        try:
            prepare([path], os.path.join(work, "out"), opts, force=True)
        except DataError as e:
            assert "\n" not in str(e)
        except Exception:  # noqa: BLE001 - the finding
            failures.append(traceback.format_exc()[-1500:])

    run()
    print(json.dumps({"examples": count[0], "baseline_mib": round(baseline, 1),
                      "peak_mib": round(rss_mib(), 1), "failures": failures[:3],
                      "n_failures": len(failures), "limit_gb": LIMIT_GB}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
