"""A small exported model for the serve/eval tests, written by the trainer's own exporter
(train.export.save_hf_dir: safetensors, generation config, tokenizer with the exported chat
template), and a way to publish it as a run's ``final/`` in a bucket.

The weights are a randomly initialised tiny LLaMA (the tiny preset's shape): what these
tests check is the serving and evaluation plumbing, not the quality of the answers. The
demo's tuned model (issue 15) can replace it once it lands.
"""

from __future__ import annotations


RUN = "serve-test-run"


def make_export(out_dir: str, template: str = "vicuna_v1.1", seed: int = 0) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.export import save_hf_dir
    from vicuna_cloud.recipes import get_preset
    from vicuna_cloud.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    cfg = LlamaConfig(**get_preset("tiny").arch.as_llama_config())
    model = LlamaForCausalLM(cfg)
    save_hf_dir(model.state_dict(), cfg, load_tokenizer("builtin:llama-sp"), template, out_dir,
                dtype="fp32")
    return out_dir


def publish(bucket_uri: str, export_dir: str, run_id: str = RUN,
            template: str = "vicuna_v1.1") -> None:
    """run.json + final/ in the bucket, as a finished run leaves them."""
    from vicuna_cloud.recipes import get_preset
    from vicuna_cloud.run_store import spec_from_preset, write_run_spec
    from vicuna_cloud.storage import open_bucket

    b = open_bucket(bucket_uri)
    spec = spec_from_preset(get_preset("tiny"), run_id=run_id,
                            dataset_uri=f"{bucket_uri}/datasets/x", dataset_sha256=None,
                            bucket_uri=bucket_uri, cloud="local")
    write_run_spec(b, spec.model_copy(update={"template": template}))
    from train.export import upload_dir  # the trainer's writer: files, then EXPORT.json
    upload_dir(b, export_dir, f"runs/{run_id}/final", step=1)
