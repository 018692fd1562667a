"""A tiny randomly initialised chat model for tests against real servers (`transformers serve`).

A 2-layer Qwen2 with a byte-level BPE tokenizer trained here on a few lines of scene JSON and
prompt text, and a ChatML chat template, saved as an ordinary Hugging Face folder: any server
that loads a local model folder can host it, with no network and no download. Its answers are
random tokens, which is the point: the harness must turn them into parse failures.

The chat template reads one variable, `enable_thinking` (Qwen's switch), and writes a marker
into the prompt when it is true, so a test can see `chat_template_kwargs` arrive at the
template through the prompt token count the server reports.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking %}thinking is on, so think first\n"
    "{%- endif %}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    '{"objects": [{"color": "r", "shape": "cu", "size": "L", "material": "M", "x": 1.5, "y": -2.25}]}',
    "Codes: 12 7 7 31 0 63 5 18 44",
    "You decode CLEVR scenes from discrete codes. Answer with the scene JSON only.",
    "colors gr r bl gn br pr cy y shapes cu sp cy sizes S L materials R M",
    "thinking is on, so think first",
]


def build_tiny_chat_model(folder: str | Path, *, seed: int = 0, vocab_size: int = 320) -> Path:
    """Write the tokenizer, config and random weights to `folder`; returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    return folder
