"""What the evaluation needs of a tokenizer: special-token ids, and text <-> ids when tasks hold text.

Pre-tokenized tasks (GLM-130B ships its evaluation data as ids) need no tokenizer at all: the
special ids then come from the checkpoint's run config, `--special-token-ids`, or GLM-130B's icetk ids
for a model with GLM-130B's vocabulary (docs/glm130b.md §2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from megatron_glm.evaluation.errors import EvalError

SPECIALS = ("pad", "mask", "gmask", "smask", "eod", "sop", "eop", "eos")
GLM_130B_IDS = {"pad": 0, "mask": 150000, "gmask": 150001, "smask": 150002, "eod": 150003, "sop": 150004,
                "eop": 150005, "eos": 20002}


def parse_special_ids(text: str) -> Dict[str, int]:
    """'mask=150000,gmask=150001,eos=20002' -> dict (the --special-token-ids syntax)."""
    ids: Dict[str, int] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in SPECIALS or not value.strip().isdigit():
            raise EvalError(f"bad --special-token-ids item {item!r}: expected NAME=ID with NAME one of "
                            f"{', '.join(SPECIALS)}")
        ids[name] = int(value)
    return ids


@dataclass
class Vocab:
    """Special ids (eos may be None: then generation ends on eop only) and an optional tokenizer."""

    special: Dict[str, Optional[int]]
    tokenizer: object = None
    """megatron_glm.data.tokenizer.GLMTokenizer (or anything with encode/decode)."""
    source: str = ""
    prefer_text: bool = False
    """Tokenize `*_pretokenized` text even where ids are present (a model with another tokenizer
    than the data's ids)."""

    def __getattr__(self, name):
        special = self.__dict__.get("special", {})
        if name in special:
            return special[name]
        raise AttributeError(name)

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer is not None

    def encode(self, text: str, where: str = "") -> List[int]:
        if self.tokenizer is None:
            raise EvalError(f"{where}: this task holds text (*_pretokenized) but no tokenizer is known; pass "
                            f"--tokenizer-model")
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> Optional[str]:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0])

    @property
    def end_tokens(self) -> List[int]:
        return [t for t in (self.special.get("eop"), self.special.get("eos")) if t is not None]


def make_vocab(tokenizer_model: Optional[str], given: Dict[str, int], run_special_ids: str = "",
               padded_vocab_size: Optional[int] = None) -> Vocab:
    """Vocab from a sentencepiece model (specials resolved as glm-prep does) and/or explicit ids.

    Order: --special-token-ids, then the run config's data.special_token_ids, then the tokenizer's own
    pieces; with no tokenizer and a GLM-130B-sized vocabulary, icetk's ids.
    """
    merged = {**parse_special_ids(run_special_ids), **given} if run_special_ids else dict(given)
    tokenizer = None
    if tokenizer_model:
        from megatron_glm.data.tokenizer import GLMTokenizer, TokenizerError

        core = {k: v for k, v in merged.items() if k != "eos"}
        try:
            tokenizer = GLMTokenizer(tokenizer_model, core)
        except TokenizerError as error:
            raise EvalError(str(error)) from None
        special: Dict[str, Optional[int]] = dict(tokenizer.special.as_dict())
        eos = merged.get("eos")
        if eos is None:
            eos_id = tokenizer.sp.eos_id()
            eos = eos_id if eos_id >= 0 and eos_id not in special.values() else None
        special["eos"] = eos
        if padded_vocab_size is not None and tokenizer.vocab_size > padded_vocab_size:
            raise EvalError(f"{tokenizer_model}: the tokenizer has {tokenizer.vocab_size} ids but the checkpoint's "
                            f"vocabulary has {padded_vocab_size}: checkpoint and tokenizer do not match")
        return Vocab(special, tokenizer, source=str(tokenizer_model))
    missing = [n for n in SPECIALS if n not in merged and n != "eos"]
    if missing and padded_vocab_size is not None and padded_vocab_size >= 150008:
        merged = {**GLM_130B_IDS, **merged}
        missing = []
    if missing:
        raise EvalError(f"no ids for special tokens {', '.join(missing)}: pass --tokenizer-model, or "
                        f"--special-token-ids {','.join(f'{n}=ID' for n in missing)}")
    special = {name: merged.get(name) for name in SPECIALS}
    if padded_vocab_size is not None:
        too_big = [f"{n}={v}" for n, v in special.items() if v is not None and v >= padded_vocab_size]
        if too_big:
            raise EvalError(f"special-token ids {', '.join(too_big)} are outside the checkpoint's vocabulary "
                            f"({padded_vocab_size} ids): checkpoint and token ids do not match")
    return Vocab(special, None, source="--special-token-ids")
