"""Run under torchrun by test_train_load.py: build on meta, shard with FSDP2, load the
base model's safetensors rows into the shards, then check every tensor and a forward pass.

argv: MODEL_DIR RESULT_JSON [REFERENCE.gguf]
With a GGUF file, the reference is transformers' own single-process load of that file
(dequantized), not of MODEL_DIR: the import and the sharded load are checked together.
"""

import json
import sys

import torch
import torch.distributed as dist

from vicuna_cloud.runspec import RunSpec  # noqa: F401  (same import path as the trainer)
from train import model as model_lib, parallel


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    d = parallel.init_distributed()
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(model_dir)
    config.use_cache = False
    model = model_lib.build_model(config, seed=0, meta=True, device=d.device)
    parallel.apply_fsdp(model, parallel.build_mesh(d), dtype="fp32", activation_checkpointing=True)
    model.to_empty(device=d.device)
    model_lib.load_sharded_weights(model, model_dir, d.device)

    if len(sys.argv) > 3:
        import os
        gguf = sys.argv[3]
        ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), dtype=torch.float32,
                                                   gguf_file=os.path.basename(gguf))
    else:
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref.eval()
    ref_sd = ref.state_dict()
    bad = []
    local_rows = 0
    for name, p in model.named_parameters():
        local_rows += p.to_local().shape[0]
        if not torch.equal(p.full_tensor(), ref_sd[name]):
            bad.append(name)
    ids = torch.arange(1, 40).unsqueeze(0)
    if len(sys.argv) > 3:  # real text for a real model
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(model_dir)(
            "The capital of France is Paris. The capital of Italy is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = ref(input_ids=ids).logits
    max_diff = float((got - want).abs().max())
    argmax_equal = bool(torch.equal(got.argmax(-1), want.argmax(-1)))
    dist.barrier()
    if d.is_main:
        with open(out, "w") as f:
            json.dump({"bad": bad, "max_diff": max_diff, "argmax_equal": argmax_equal,
                       "local_rows": local_rows,
                       "full_rows": sum(p.shape[0] for p in ref.parameters())}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
