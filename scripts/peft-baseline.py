#!/usr/bin/env python3
"""The PyTorch + PEFT prompt-tuning rows of issue 6, on whatever card this runs on.

    python3 scripts/peft-baseline.py [SHAPE:BATCH ...]    (default tinyllama-1.1b:8 opt-6.7b:4)
    python3 scripts/peft-baseline.py --cpu [SHAPE:BATCH ...]  (default smollm-135m:4)

Same work as `softtune bench --precision bf16 --seq 1024 --soft 20 --steps 3 --warmup 2`:
random weights of the real model's shape in bfloat16 (no download), a 20-token soft prompt
(PEFT's prompt tuning), AdamW, loss over the text tokens; tokens/s counts text tokens.
Peak memory is PyTorch's reserved peak (what its allocator took from the card).

With --cpu, the same work as `softtune bench --device cpu --warmup 2` (float32, 256 text
tokens per sequence, on all the cores torch sees); peak memory is the process's peak
resident set. Needs torch, transformers and peft; numbers compare with softtune's only on
the same card or CPU.
"""

import platform
import resource
import sys
import time

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, GPTJConfig, LlamaConfig, OPTConfig

# The shapes of softtune's bench presets (src/bench.rs), with the attention PEFT users get:
# transformers has no SDPA path for GPT-J.
SHAPES = {
    "smollm-135m": (
        LlamaConfig,
        dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True),
        "sdpa",
    ),
    "tinyllama-1.1b": (
        LlamaConfig,
        dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
        "sdpa",
    ),
    "gptj-6b": (
        GPTJConfig,
        dict(vocab_size=50400, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64,
             n_positions=2048, activation_function="gelu_new", tie_word_embeddings=False),
        "eager",
    ),
    "opt-6.7b": (
        OPTConfig,
        dict(vocab_size=50272, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
             ffn_dim=16384, max_position_embeddings=2048, word_embed_proj_dim=4096,
             do_layer_norm_before=True, activation_function="relu"),
        "sdpa",
    ),
}
SOFT, STEPS, WARMUP = 20, 3, 2


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench(shape, batch, device):
    cls, kwargs, attn = SHAPES[shape]
    config = cls(**kwargs)
    seq, dtype = (1024, torch.bfloat16) if device == "cuda" else (256, torch.float32)
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                     attn_implementation=attn)
        except TypeError:
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype,
                                                     attn_implementation=attn)
    model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                     num_virtual_tokens=SOFT))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    elapsed = 0.0
    for step in range(WARMUP + STEPS):
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        sync(device)
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= WARMUP:
            elapsed += time.perf_counter() - t
    tps = batch * seq * STEPS / elapsed
    if device == "cuda":
        reserved = torch.cuda.max_memory_reserved() / 2**30
        allocated = torch.cuda.max_memory_allocated() / 2**30
        peak = f"peak {reserved:.1f} GiB reserved ({allocated:.1f} GiB allocated)"
    else:
        # ru_maxrss is in KiB on Linux.
        peak = f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB resident"
    print(f"{shape:<15} peft {batch}x{seq} soft {SOFT}: {tps:10.1f} tokens/s, "
          f"{elapsed * 1000 / STEPS:8.1f} ms/step, {peak}", flush=True)
    del model, opt, trainable
    if device == "cuda":
        torch.cuda.empty_cache()


def main():
    args = sys.argv[1:]
    device = "cuda"
    if args[:1] == ["--cpu"]:
        device, args = "cpu", args[1:]
        print(platform.processor() or platform.machine(), f"{torch.get_num_threads()} threads",
              "torch", torch.__version__, flush=True)
        default = ["smollm-135m:4"]
    else:
        print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
        default = ["tinyllama-1.1b:8", "opt-6.7b:4"]
    for arg in args or default:
        shape, _, batch = arg.partition(":")
        if shape not in SHAPES:
            sys.exit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        bench(shape, int(batch or 4), device)


if __name__ == "__main__":
    main()
