"""Adaptive Decoding's temperature head (Dhuliawala et al. 2024, arXiv 2411.09661): a small MLP on a frozen
language model's last hidden state, giving a softmax over a discrete set of temperatures.

- sequence level: one temperature per response, from the hidden state of the last prompt token;
- token level: one temperature per generated token, from the hidden state that predicts it.

A head is saved as a small directory beside its model, like a LoRA adapter: `temperature_head.json` (the
temperature set, the level, the MLP's shape, and the language model it reads, `base_model`) and
`temperature_head.safetensors` (its weights). A `base_model` starting with `.` is relative to the head's
directory (an export puts the head in DIR/temperature_head with base_model `..`); any other is a path
from the project root or a hub id. The directory is an ordinary model reference everywhere
else: selfimprove.models.load gives its language model, and the hf backend samples with the head.

Decoding with a head is our own loop over the model's forward pass (with its KV cache): transformers'
`generate` applies one temperature to a whole batch and does not hand its hidden states to a logits
processor, and token level needs both at every step.
"""

from __future__ import annotations

import json
from pathlib import Path

# re-exported: the stages of head loops use them through this module
from selfimprove.models.head_files import (CONFIG, DEFAULT_TEMPERATURES, LEVELS, WEIGHTS, HeadConfig,  # noqa: F401
                                              base_model, is_head, parse_temperatures, read_config)


def build(config: HeadConfig, seed: int = 0):
    """A fresh head: `layers` linear layers with ReLU between them. The last one starts at zero, so a new
    head's distribution is uniform over the temperatures (LPO's first samples explore them evenly)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    sizes = [config.hidden_size] + [config.width] * (config.layers - 1) + [len(config.temperatures)]
    modules: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        modules.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            modules.append(nn.ReLU())
    nn.init.zeros_(modules[-1].weight)
    nn.init.zeros_(modules[-1].bias)
    return nn.Sequential(*modules)


def save(head, config: HeadConfig, directory: str | Path) -> None:
    from safetensors.torch import save_file

    from selfimprove.core.errors import writing

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with writing(directory):
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(directory / WEIGHTS))
        (directory / CONFIG).write_text(json.dumps(config.to_json(), indent=1) + "\n")


def load(directory: str | Path):
    """(head, config) from a head directory, on the CPU, in eval mode."""
    from safetensors.torch import load_file

    config = read_config(directory)
    head = build(config)
    head.load_state_dict(load_file(str(Path(directory) / WEIGHTS)))
    return head.eval(), config


def choose(head, hidden, pick: str, generator=None):
    """Indices into the temperature set for each row of hidden: sampled from the head's softmax, or its
    argmax."""
    import torch

    probs = torch.softmax(head(hidden.float()), dim=-1)
    if pick == "argmax":
        return probs.argmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def next_tokens(logits, temperature, top_p: float, generator=None):
    """One token per row: argmax where the row's temperature is 0, else a sample from softmax(logits / t)
    cut to the top-p nucleus (always keeping the most likely token)."""
    import torch

    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    scaled = logits / temperature.clamp(min=1e-6)[:, None]
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return torch.where(temperature == 0, greedy, sampled)


def sample(model, tokenizer, head, config: HeadConfig, prompts: list[str], n: int, top_p: float,
           max_new_tokens: int, batch_size: int, seed: int, pick: str = "sample", on_batch=None,
           add_special_tokens: bool = True) -> tuple[list[list[str]], list[list]]:
    """n completions per prompt decoded with the head's temperatures, and the temperatures used: one per
    completion (sequence level) or one per generated token (token level). Seeded per call, so a
    regenerated shard is identical to the first."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = [p for p in prompts for _ in range(n)]
    per_batch = max(1, batch_size)
    texts: list[str] = []
    temps: list = []
    for start in range(0, len(rows), per_batch):
        chunk_texts, chunk_temps = _decode(model, tokenizer, head, config, rows[start:start + per_batch], top_p,
                                           max_new_tokens, pick, generator, add_special_tokens)
        texts += chunk_texts
        temps += chunk_temps
        if on_batch:
            on_batch(len(texts) // n)
    return ([texts[i * n:(i + 1) * n] for i in range(len(prompts))],
            [temps[i * n:(i + 1) * n] for i in range(len(prompts))])


def _decode(model, tokenizer, head, config: HeadConfig, prompts: list[str], top_p: float, max_new_tokens: int,
            pick: str, generator, add_special_tokens: bool) -> tuple[list[str], list]:
    """One batch, left-padded; positions follow the attention mask as in `generate`."""
    import torch

    device = model.device
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)
    mask = encoded["attention_mask"]
    values = torch.tensor(config.temperatures)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    generated, used = [], []
    with torch.no_grad():
        out = model(input_ids=encoded["input_ids"], attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, output_hidden_states=True)
        fixed = None
        for _ in range(max_new_tokens):
            hidden = out.hidden_states[-1][:, -1].cpu()
            if fixed is None or config.level == "token":
                index = choose(head, hidden, pick, generator)
                fixed = index if config.level == "sequence" else None
            temperature = values[index]
            token = next_tokens(out.logits[:, -1].cpu(), temperature, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            generated.append(token)
            used.append(torch.where(finished, torch.full_like(index, -1), index))
            finished |= token == eos
            if finished.all():
                break
            mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(input_ids=token[:, None].to(device), attention_mask=mask,
                        position_ids=(mask.sum(-1, keepdim=True) - 1), use_cache=True, output_hidden_states=True,
                        **_cache(model, out))
    ids = torch.stack(generated, dim=1)
    steps = torch.stack(used, dim=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    # The set's own values are recorded (not float32 copies of them), so LPO finds each one's index.
    if config.level == "sequence":
        return texts, [config.temperatures[int(row[0])] for row in steps]
    return texts, [[config.temperatures[int(i)] for i in row if i >= 0] for row in steps]


def _cache(model, out) -> dict:
    """The KV cache of the last forward pass, under the name this transformers release takes it by
    (`cache` from 5.24; `past_key_values` before, and deprecated since)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    found = getattr(out, "cache", None)
    return {name: found if found is not None else out.past_key_values}


def prompt_features(model, tokenizer, prompts: list[str], batch_size: int = 64):
    """The frozen model's last hidden state at each prompt's last token (sequence level)."""
    import torch

    found = []
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
        mask = encoded["attention_mask"]
        with torch.no_grad():
            out = model(**encoded, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True)
        found.append(out.hidden_states[-1][:, -1].float().cpu())
    return torch.cat(found)


def token_features(model, tokenizer, prompt: str, completion: str, steps: int):
    """The frozen model's hidden states that predicted each of a completion's first `steps` tokens
    (token level), teacher-forced: the prompt's last position, then each completion token's but the last.
    The completion is tokenised after the prompt, as the sampler produced it."""
    import torch

    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids[:steps]], device=model.device)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float().cpu()
    start = len(prompt_ids) - 1
    return hidden[start:start + min(steps, len(completion_ids))]


def lpo_loss(head, chosen_features, chosen_index, rejected_features, rejected_index, beta: float,
             chosen_rows=None, rejected_rows=None, pairs: int = 0):
    """LPO's separate loss, -log sigmoid(beta (log P(tau_c) - log P(tau_r))), averaged over pairs.

    Sequence level: one feature row and one temperature index per response. Token level: a row per
    token, *_rows gives each token's pair (0 .. pairs - 1), and a response's log-probabilities are summed
    over its tokens."""
    import torch

    def logp(features, index, rows):
        values = torch.log_softmax(head(features), dim=-1).gather(-1, index[:, None])[:, 0]
        return values if rows is None else torch.zeros(pairs).index_add(0, rows, values)

    margin = logp(chosen_features, chosen_index, chosen_rows) - logp(rejected_features, rejected_index, rejected_rows)
    return -torch.nn.functional.logsigmoid(beta * margin).mean()
