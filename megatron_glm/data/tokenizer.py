"""The tokenizer every stage uses: a sentencepiece model plus GLM's special tokens at known ids.

Models trained by `glm-prep train-tokenizer` carry the specials as sentencepiece *control* symbols
at fixed ids (pad 0, unk 1, </s> 2, [MASK] 3, [gMASK] 4, [sMASK] 5, <eod> 6, <sop> 7, <eop> 8):
control symbols are never produced from raw text, so a document containing the characters
"[MASK]" cannot inject a mask token. Any other sentencepiece model (e.g. a team's icetk text model,
whose specials live after its 150000 pieces: docs/glm130b.md §2.1) works too, with the ids given
explicitly; ids beyond the model's own pieces extend the vocabulary.

Only sentencepiece and numpy are imported here: glm-prep's workers must start fast (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import sentencepiece as spm

SPECIAL_NAMES = ("pad", "mask", "gmask", "smask", "eod", "sop", "eop")
"""The special tokens GLM needs; `glm-prep` and the sample builders refer to them by these names."""

SPECIAL_PIECES = {"mask": "[MASK]", "gmask": "[gMASK]", "smask": "[sMASK]", "eod": "<eod>",
                  "sop": "<sop>", "eop": "<eop>", "pad": "<pad>"}
"""Piece strings of the specials in models trained by glm-prep (and what decode prints for them)."""

GLM_130B_SPECIAL_IDS = {"pad": 0, "mask": 150000, "gmask": 150001, "smask": 150002, "eod": 150003,
                        "sop": 150004, "eop": 150005}
"""icetk's ids (docs/glm130b.md §2.1), for teams tokenising with GLM-130B's own text model."""


class TokenizerError(ValueError):
    """The tokenizer model or its special-token ids are unusable; the message says how to fix it."""


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    mask: int
    gmask: int
    smask: int
    eod: int
    sop: int
    eop: int

    def as_dict(self) -> Dict[str, int]:
        return {name: getattr(self, name) for name in SPECIAL_NAMES}


def parse_special_ids(text: str) -> Dict[str, int]:
    """'mask=150000,gmask=150001' -> {'mask': 150000, 'gmask': 150001} (CLI syntax)."""
    ids: Dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in SPECIAL_NAMES or not value.strip().lstrip("-").isdigit():
            raise TokenizerError(
                f"bad special-token id {item!r}: expected NAME=ID with NAME one of {', '.join(SPECIAL_NAMES)}"
            )
        ids[name] = int(value)
    return ids


class GLMTokenizer:
    """sentencepiece encode/decode plus GLM's special-token ids."""

    def __init__(self, model_file: str, special_ids: Optional[Mapping[str, int]] = None):
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as error:
            raise TokenizerError(f"{model_file}: not a readable sentencepiece model ({error})") from error
        self.model_file = str(model_file)
        self.special = self._resolve_special_ids(dict(special_ids or {}))
        self.vocab_size = max(self.sp.get_piece_size(), max(self.special.as_dict().values()) + 1)

    def _resolve_special_ids(self, given: Dict[str, int]) -> SpecialIds:
        resolved, missing = {}, []
        for name in SPECIAL_NAMES:
            if name in given:
                resolved[name] = given[name]
                continue
            piece_id = self.sp.piece_to_id(SPECIAL_PIECES[name])
            if name == "pad" and self.sp.pad_id() >= 0:
                piece_id = self.sp.pad_id()
            if piece_id == self.sp.unk_id() or piece_id < 0:
                missing.append(name)
            else:
                resolved[name] = piece_id
        if missing:
            raise TokenizerError(
                f"{self.model_file}: no ids for special tokens {', '.join(missing)}; pass them, e.g. "
                f"--special-token-ids {','.join(f'{n}=ID' for n in missing)} (GLM-130B's icetk: "
                f"{','.join(f'{n}={GLM_130B_SPECIAL_IDS[n]}' for n in missing)})"
            )
        values = list(resolved.values())
        if len(set(values)) != len(values):
            raise TokenizerError(f"special-token ids must be distinct: {resolved}")
        return SpecialIds(**resolved)

    def encode(self, text: str) -> List[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> List[List[int]]:
        """Native batch encoding: sentencepiece's threads run without the GIL."""
        return self.sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; specials render as their piece names ([MASK], <sop>, ...)."""
        names = {value: SPECIAL_PIECES[name] for name, value in self.special.as_dict().items()}
        out, run = [], []
        for token in ids:
            token = int(token)
            if token in names:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(names[token])
            elif token < self.sp.get_piece_size():
                run.append(token)
            else:
                out.append(f"<id {token}>")
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)
