"""Test helpers (import as ``from helpers.cli import run_cli``; tests/ is on sys.path).

    cli.py              run the real CLI entry point in-process; upload a tiny dataset
    train.py            tiny run specs, torchrun the trainer, read metrics
    cost.py             a fake clock and specs for ledger and cost tests
    cloud_servers.py    moto S3 and fake-gcs-server on loopback (session fixtures in conftest)
    fault_proxy.py      an HTTP proxy that injects faults in front of either
    metadata_server.py  a fake cloud metadata endpoint (preemption notices)
    local_http.py       the loopback HTTP service both of those build on
    openai_standin.py   an OpenAI-compatible stand-in (the eval judge) at the HTTP boundary
    serve.py            a tiny exported model and its run in a bucket (serve/eval tests)
    children/           scripts the tests start as subprocesses

Fixtures live in tests/conftest.py, never here.
"""
