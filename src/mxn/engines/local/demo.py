"""`mxn models create-demo`: a small Qwen2-style chat model, trained here, saved with `save_pretrained`.

No model hub is reachable, so the zero-config start builds its own model: a byte-level BPE tokenizer
trained on the bundled dialogues (`demo_corpus.json`), a 4-layer Qwen2 decoder trained on them for about
a minute on the CPU, and a ChatML chat template. It answers questions about mxn readably and knows nothing
else; it is loaded back through the same code as any HuggingFace model directory.

Its template shows tools as Qwen2.5's does (a tools section in the system prompt, calls in `<tool_call>` blocks,
results in `<tool_response>` blocks), so the embedded engine takes `tools` for it; it is not trained to write
calls (a minute is too short for a model this small to learn it), so it seldom does.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("mxn.demo")

DEMO_NAME = "mxn-demo"
SYSTEM = "You are mxn-demo, a tiny model that answers questions about mxn."
# Without tools, plain ChatML (what the dialogues are rendered as); with tools, Qwen2.5's layout.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- messages[0].content ~ '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call functions. Their signatures are within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' ~ (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each call, return a json object with the name and arguments within "
    "<tool_call></tool_call> XML tags.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' and tools and loop.first %}"
    "{%- elif m.role == 'assistant' and m.tool_calls %}"
    "{{- '<|im_start|>assistant' }}{%- if m.content %}{{- '\\n' ~ m.content }}{%- endif %}"
    "{%- for c in m.tool_calls %}{%- set f = c.function if c.function is defined else c %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' ~ f.name ~ \'", "arguments": \' ~ (f.arguments | tojson) }}'
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' ~ m.content ~ '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The llama.cpp pre-tokenizer that splits text as this model is served: transformers loads any `qwen2` model
# directory as Qwen2Tokenizer, whose Qwen2 regex replaces the plain ByteLevel (GPT-2 regex) one it was trained
# with. llama.cpp's converter cannot tell from a vocabulary trained here, so the model says it
# (`tokenizer_config.json`, read by mxn.deploy.gguf).
GGUF_PRETOKENIZER = "qwen2"


def _corpus() -> dict[str, Any]:
    text = resources.files("mxn.engines.local").joinpath("demo_corpus.json").read_text(encoding="utf-8")
    corpus: dict[str, Any] = json.loads(text)
    return corpus


def dialogues() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _corpus()["dialogues"]
    return items


def tool_use() -> dict[str, Any]:
    """The tool the demo knows (`tool`), its cities, questions and results."""
    use: dict[str, Any] = _corpus()["tool_use"]
    return use


def tool_round_trip(question: str, city: str, result: str) -> list[dict[str, Any]]:
    """A conversation in which the demo calls its tool and answers with the result."""
    use = tool_use()
    call = {"type": "function", "function": {"name": use["tool"]["function"]["name"], "arguments": {"city": city}}}
    return [
        {"role": "user", "content": question.format(city=city)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": json.dumps({"weather": result})},
        {"role": "assistant", "content": use["answer"].format(city=city, result=result)},
    ]


def _samples() -> list[str]:
    """Every paraphrase, with and without a system prompt, rendered as the chat template renders it."""
    out = []
    for d in dialogues():
        for q in d["q"]:
            turn = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{d['a']}<|im_end|>\n"
            out.append(turn)
            out.append(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + turn)
    return out


def _tool_samples() -> list[str]:
    """A tool round trip for every question and city, rendered by the chat template itself."""
    from transformers.utils.chat_template_utils import render_jinja_template

    out = []
    use = tool_use()
    for i, question in enumerate(use["questions"]):
        for j, city in enumerate(use["cities"]):
            result = use["results"][(i + j) % len(use["results"])]
            conversation = tool_round_trip(question, city, result)
            # typed `-> str`, it returns (texts, generation indices)
            rendered: Any = render_jinja_template([conversation], tools=[use["tool"]], chat_template=CHAT_TEMPLATE)
            out.append(rendered[0][0])
    return out


def build_tokenizer(samples: list[str], vocab_size: int = 2048) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(samples, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=SPECIALS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_model(tokenizer: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


def train(
    model: Any,
    tokenizer: Any,
    samples: list[str],
    seconds: float,
    report: Callable[[str], None],
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Next-token training until the time is up (or `max_steps`, for a model that is the same on any machine)."""
    encoded = [torch.tensor(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in samples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = random.Random(0)
    model.train()
    start, steps, loss_value = time.monotonic(), 0, float("nan")
    while time.monotonic() - start < seconds and (max_steps is None or steps < max_steps):
        loss = _loss(model, rng.sample(encoded, k=min(32, len(encoded))), tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps, loss_value = steps + 1, float(loss.detach())
        if steps % 50 == 0:
            report(f"  step {steps}: loss {loss_value:.3f} ({time.monotonic() - start:.0f}s)")
    model.eval()
    return {"steps": steps, "seconds": round(time.monotonic() - start, 1), "final_loss": round(loss_value, 4)}


def _loss(model: Any, batch: list[torch.Tensor], pad: int) -> Any:
    ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(b) for b in batch])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def create_demo(
    out: Path, seconds: float = 60.0, report: Callable[[str], None] = print, max_steps: int | None = None
) -> Path:
    from transformers import GenerationConfig

    torch.manual_seed(0)
    # The tool round trips shape the vocabulary (so that a call is a few tokens) but are not trained on: a minute
    # of training does not teach a model this small to write calls, and the dialogues would get fewer steps.
    samples = _samples()
    tokenizer = build_tokenizer(samples + _tool_samples())
    model = build_model(tokenizer)
    params = sum(p.numel() for p in model.parameters())
    report(f"training {DEMO_NAME}: {params / 1e6:.1f}M parameters, {len(samples)} samples, {seconds:.0f}s")
    stats = train(model, tokenizer, samples, seconds, report, max_steps)
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=0.3,
        top_p=0.9,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tokenizer_config = out / "tokenizer_config.json"
    saved = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    tokenizer_config.write_text(json.dumps({**saved, "gguf_pretokenizer": GGUF_PRETOKENIZER}, indent=2) + "\n")
    card = {
        "name": DEMO_NAME,
        "parameters": params,
        "samples": len(samples),
        **stats,
        "what": "a demo model trained by mxn on its bundled dialogues; it knows nothing else",
    }
    (out / "mxn-demo.json").write_text(json.dumps(card, indent=2) + "\n")
    report(f"saved {DEMO_NAME} to {out} ({stats['steps']} steps, final loss {stats['final_loss']})")
    return out
