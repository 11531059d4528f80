#!/usr/bin/env python3
"""The PyTorch + PEFT prompt-tuning rows of issue 6, on whatever card this runs on.

    python3 scripts/peft-baseline.py [SHAPE:BATCH ...]    (default tinyllama-1.1b:8 opt-6.7b:4)

Same work as `softtune bench --precision bf16 --seq 1024 --soft 20 --steps 3 --warmup 2`:
random weights of the real model's shape in bfloat16 (no download), a 20-token soft prompt
(PEFT's prompt tuning), AdamW, loss over the text tokens; tokens/s counts text tokens.
Peak memory is PyTorch's reserved peak (what its allocator took from the card).
Needs torch, transformers and peft; numbers compare with softtune's only on the same card.
"""

import sys
import time

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, GPTJConfig, LlamaConfig, OPTConfig

# The shapes of softtune's bench presets (src/bench.rs), with the attention PEFT users get:
# transformers has no SDPA path for GPT-J.
SHAPES = {
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
SEQ, SOFT, STEPS, WARMUP = 1024, 20, 3, 2


def bench(shape, batch):
    cls, kwargs, attn = SHAPES[shape]
    config = cls(**kwargs)
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                     attn_implementation=attn)
        except TypeError:
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16,
                                                     attn_implementation=attn)
    model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                     num_virtual_tokens=SOFT))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    elapsed = 0.0
    for step in range(WARMUP + STEPS):
        ids = torch.randint(0, config.vocab_size, (batch, SEQ), device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= WARMUP:
            elapsed += time.perf_counter() - t
    tps = batch * SEQ * STEPS / elapsed
    reserved = torch.cuda.max_memory_reserved() / 2**30
    allocated = torch.cuda.max_memory_allocated() / 2**30
    print(f"{shape:<15} peft {batch}x{SEQ} soft {SOFT}: {tps:10.1f} tokens/s, "
          f"{elapsed * 1000 / STEPS:8.1f} ms/step, peak {reserved:.1f} GiB reserved "
          f"({allocated:.1f} GiB allocated)", flush=True)
    del model, opt, trainable
    torch.cuda.empty_cache()


def main():
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    for arg in sys.argv[1:] or ["tinyllama-1.1b:8", "opt-6.7b:4"]:
        shape, _, batch = arg.partition(":")
        if shape not in SHAPES:
            sys.exit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        bench(shape, int(batch or 4))


if __name__ == "__main__":
    main()
