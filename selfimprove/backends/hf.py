"""The transformers backend: the model loaded in this process, batched `generate` (selfimprove.backends.sampling)
and next-token probabilities from one forward pass. A model reference with a temperature head
(selfimprove.models.temperature_head) decodes with the temperatures its head picks."""

from __future__ import annotations

from selfimprove.core.registry import load

# Decoding with a temperature head, named rather than imported: it counts in the code fingerprint of
# the stages that read a head's model (Stage.model_code of the stages that write one), not of every
# stage that samples with this backend.
TEMPERATURE_HEAD = "selfimprove.models.temperature_head"


class HFBackend:
    SETTINGS: dict = {}  # no section: the model runs in this process
    TRACKED = ()
    TEMPERATURE_HEAD = True  # decodes with a model's temperature head (Adaptive Decoding)

    @classmethod
    def open(cls, model_ref: str, revision: str | None, settings: dict, chat_template: bool, scratch):
        return cls(model_ref, revision, chat_template=chat_template)

    def __init__(self, model_ref: str, revision: str | None = None, chat_template: bool = False):
        self.model_ref, self.revision, self.chat_template = model_ref, revision, chat_template
        self._model = self._tokenizer = self._head = None
        self.usage: dict[str, float] = {}

    def _load(self):
        if self._model is None:
            from selfimprove import models
            from selfimprove.models.head_files import is_head

            self._model, self._tokenizer = models.load(self.model_ref, self.revision)
            if is_head(self.model_ref):
                self._head = load(f"{TEMPERATURE_HEAD}:load")(self.model_ref)
        return self._model, self._tokenizer

    @property
    def temperature_head(self):
        """The model's temperature head config (selfimprove.models.temperature_head.HeadConfig), or None."""
        from selfimprove.models.head_files import is_head, read_config

        return read_config(self.model_ref) if is_head(self.model_ref) else None

    def sample_with_temperatures(self, prompts: list[str], n: int, top_p: float, max_new_tokens: int,
                                 batch_size: int, seed: int, pick: str = "sample", on_batch=None):
        """With a temperature head: (n completions per prompt, the temperature of each: one number at
        sequence level, one per generated token at token level). pick: sample the head or take its argmax."""
        model, tokenizer = self._load()
        head, config = self._head
        if self.chat_template:
            from selfimprove.backends import chat_prompts

            prompts = chat_prompts(tokenizer, prompts)
        return load(f"{TEMPERATURE_HEAD}:sample")(model, tokenizer, head, config, prompts, n, top_p, max_new_tokens, batch_size,
                                       seed, pick, on_batch=on_batch, add_special_tokens=not self.chat_template)

    def sample(self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
               batch_size: int, seed: int, on_batch=None) -> list[list[str]]:
        from selfimprove.backends.sampling import sample

        model, tokenizer = self._load()
        if self._head is not None:  # the head picks the temperature; `temperature` is not used
            return self.sample_with_temperatures(prompts, n, top_p, max_new_tokens, batch_size, seed,
                                                 on_batch=on_batch)[0]
        if self.chat_template:
            from selfimprove.backends import chat_prompts

            prompts = chat_prompts(tokenizer, prompts)
        return sample(model, tokenizer, prompts, n, temperature, top_p, max_new_tokens, batch_size, seed,
                      on_batch=on_batch, add_special_tokens=not self.chat_template)

    def choice_probs(self, prompts: list[str], choices: list[str], batch_size: int = 64,
                     on_batch=None) -> list[list[float]]:
        """For each prompt, the probability that the text continues with each choice (its first token;
        a judge prefilled with `Score: ` reads its digits this way). Not renormalised: the sum says how
        much of the model's mass falls on valid answers at all."""
        import torch

        model, tokenizer = self._load()
        probs: list[list[float]] = []
        for start in range(0, len(prompts), batch_size):
            targets = [continuation_tokens(tokenizer, p, choices) for p in prompts[start:start + batch_size]]
            contexts = sorted({context for per_prompt in targets for context, _ in per_prompt})
            row = {context: i for i, context in enumerate(contexts)}
            with torch.no_grad():
                logits = model(**_left_padded(contexts, tokenizer.pad_token_id, model.device)).logits[:, -1, :]
            next_token = torch.softmax(logits.float(), dim=-1)
            probs.extend([next_token[row[context], token].item() for context, token in per_prompt]
                         for per_prompt in targets)
            if on_batch:
                on_batch(len(probs))
        return probs

    def logprobs(self, prompts: list[str], completions: list[str], batch_size: int = 64) -> list[float]:
        """log p(completion | prompt) under the model at temperature 1: the sum over the completion's
        tokens (tokenised after the prompt, without the end of sequence), teacher-forced. DivPO's
        probability criterion reads it (a rarer response has a lower one)."""
        import torch

        model, tokenizer = self._load()
        found: list[float] = []
        for start in range(0, len(prompts), batch_size):
            rows = [(tokenizer(p)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
                    for p, c in zip(prompts[start:start + batch_size], completions[start:start + batch_size])]
            width = max(len(p) + len(c) for p, c in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            target = torch.zeros_like(ids, dtype=torch.bool)  # positions holding a completion token
            for i, (p, c) in enumerate(rows):  # right-padded: positions are the tokens' own
                ids[i, :len(p) + len(c)] = torch.tensor(p + c)
                mask[i, :len(p) + len(c)] = 1
                target[i, len(p):len(p) + len(c)] = True
            with torch.no_grad():
                logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None].to(model.device))[..., 0]
            found.extend((logp * target[:, 1:].to(model.device)).sum(dim=1).tolist())
        return found

    def close(self) -> None:
        self._model = self._tokenizer = self._head = None


def continuation_tokens(tokenizer, prompt: str, choices: list[str]) -> list[tuple[tuple[int, ...], int]]:
    """(context token ids, the choice's first token id) for each choice after prompt. Tokenising the
    joined text matters: BPE tokenisers merge across the seam (SmolLM2 writes `Winner: A` as
    `Winner`, `:`, `ĠA`, so after `Winner: ` the choice's token is `ĠA` and the context drops the `Ġ`)."""
    base = tokenizer(prompt)["input_ids"]
    pairs = []
    for choice in choices:
        full = tokenizer(prompt + choice)["input_ids"]
        shared = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), min(len(base), len(full)))
        if shared >= len(full):
            raise ValueError(f"choice {choice!r} adds no token after the prompt")
        pairs.append((tuple(full[:shared]), full[shared]))
    return pairs


def _left_padded(sequences: list[tuple[int, ...]], pad_id: int, device):
    import torch

    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
