"""vicuna-cloud: the Vicuna fine-tuning recipe on preemptible cloud GPUs.

The control plane (this package) never imports torch. Its layers, arrows pointing down:

    cli/        Typer: parse flags, call the SDK, render rich tables or --json; the one
                place a VicunaError becomes `error: ...` and exit code 2
    sdk/        the Python API: typed requests, plans and results; domain errors
    skypilot/   backend: task, credentials, optimizer, managed-job submit/queue/logs
    local/      backend: supervisor, live view, sample corpus (this machine's CPU)
    storage/, data/, costs/, pricing, ledger, recipes, runspec, run_store, run_index,
    run_progress, exported_model, templates, tokenizer: the parts both backends use
    bucket_keys, errors, hashing, paths, exit_codes: leaves, imported by everything

train/ (the data plane) imports the torch-free modules here, never the reverse.
"""

__version__ = "0.1.0"
