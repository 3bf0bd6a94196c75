"""Tiny random causal LMs for the generation tests, built from configs: a Llama (grouped-query attention, tied
embeddings, as SmolLM2) and a GPT-2 (Conv1D layers, learned positions), with a byte-level BPE tokenizer trained on
real text that has ChatML's special tokens and a chat template (as SmolLM2's). A long context (DAS_MAX_NEW_TOKENS
is the bound that matters in the tests) and `perturbed` copies: a second version whose greedy text differs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
CONTEXT = 2048
INIT = 0.3  # weights' std: transformers' 0.02 makes a random model repeat its last token; this one wanders


def chat_tokenizer(docs: list[str], chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    """Byte-level BPE (400 tokens) on `docs`; end of sequence <|im_end|>, no pad token (as GPT-2's)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=400, min_frequency=2, special_tokens=SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", chat_template=chat_template)


def tiny_causal(family: str, tokenizer: PreTrainedTokenizerFast, folder: Path, seed: int = 0,
                never_ends: bool = False) -> Path:
    """A random `family` ("llama" or "gpt2") model with `tokenizer`, saved in `folder`. `never_ends`: the
    end-of-sequence token's embedding row (tied: its row of the head too) is zero, so its logit is always 0, under the
    best of the 399 others: greedy text runs to max_tokens (a long stream, for the hot swap)."""
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT, bos_token_id=1,
            eos_token_id=2, tie_word_embeddings=True, initializer_range=INIT))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                                           n_positions=CONTEXT, bos_token_id=1, eos_token_id=2,
                                           initializer_range=INIT))
    if never_ends:
        with torch.no_grad():
            model.get_input_embeddings().weight[tokenizer.eos_token_id] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def perturbed(folder: Path, out: Path, seed: int = 1, scale: float = 0.5) -> Path:
    """A copy of the model in `folder` (same config and tokenizer) with noise added to every weight: another version
    of the same lineage, whose answers differ."""
    out.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.name != "model.safetensors":
            (out / path.name).write_bytes(path.read_bytes())
    generator = torch.Generator().manual_seed(seed)
    weights = load_file(str(folder / "model.safetensors"))
    noisy = {name: (w + scale * torch.randn(w.shape, generator=generator) * w.float().std().clamp(min=1e-3)).to(w.dtype)
             for name, w in weights.items()}
    save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def reference_ids(folder: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """What transformers' own `generate` gives, greedy, from the model in `folder`: the tokens after the prompt (it
    stops at the end-of-sequence token, which it includes)."""
    from das_engine.loading import load_lm

    model = load_lm(folder).model.eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.generation_config.eos_token_id)
    return out[0, len(prompt_ids):].tolist()
