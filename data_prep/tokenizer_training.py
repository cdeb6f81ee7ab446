"""`glm-prep train-tokenizer`: a bilingual sentencepiece unigram model with GLM's special tokens.

Sentences are sampled from the inputs (an equal byte budget per file, so a small Chinese corpus is
not drowned by a large English one), split at line breaks and cut to sentencepiece's maximum
sentence length. A file found damaged within its budget (see data_prep/readers.py) stops the job,
as in `glm-prep tokenize`, unless damaged files are accepted: a WuDao file that is not an array
would otherwise leave a "bilingual" tokenizer without its Chinese. Settings follow what a GLM-style bilingual model needs:
- unigram with byte fallback: no unknown characters, newlines and rare CJK survive as bytes;
- identity normalisation and no whitespace folding: code and formatting round-trip exactly;
- digits split, so numbers tokenise consistently;
- GLM's specials as *control* symbols at fixed ids (megatron_glm.data.tokenizer): pad 0, unk 1,
  </s> 2, [MASK] 3, [gMASK] 4, [sMASK] 5, <eod> 6, <sop> 7, <eop> 8.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Sequence

import sentencepiece as spm

from data_prep.readers import Damage, Document, guess_format, read_documents
from data_prep.tokenize import DAMAGE_ADVICE, DamagedInput, describe_damage
from megatron_glm.data.tokenizer import GLMTokenizer, SPECIAL_PIECES

log = logging.getLogger("glm-prep")

MAX_SENTENCE_BYTES = 4000  # sentencepiece drops sentences over 4192 bytes
CONTROL_SYMBOLS = [SPECIAL_PIECES[name] for name in ("mask", "gmask", "smask", "eod", "sop", "eop")]


def _chunks(line: str) -> Iterator[str]:
    encoded = line.encode("utf-8")
    if len(encoded) <= MAX_SENTENCE_BYTES:
        yield line
        return
    start = 0
    while start < len(encoded):
        piece = encoded[start:start + MAX_SENTENCE_BYTES].decode("utf-8", errors="ignore")
        yield piece
        start += max(1, len(piece.encode("utf-8")))


def sample_sentences(files: Sequence[str], sample_bytes: int, fmt: Optional[str] = None,
                     reader_options: Optional[Dict] = None, accept_damaged_files: bool = False) -> Iterator[str]:
    """Lines of text from every file, at most sample_bytes / len(files) bytes from each. A damage
    met within a file's budget raises DamagedInput, or is logged if accept_damaged_files."""
    budget = max(1, sample_bytes // max(1, len(files)))
    for path in files:
        used, documents, counters = 0, 0, {}
        file_format = fmt or guess_format(path)
        for item in read_documents(path, file_format, counters=counters, **(reader_options or {})):
            if isinstance(item, Damage):
                _damaged(item, documents, counters["bytes"], file_format, accept_damaged_files)
            if not isinstance(item, Document):
                continue
            documents += 1
            for text in (item.text, item.target or ""):
                for line in text.splitlines():
                    if not line.strip():
                        continue
                    for chunk in _chunks(line):
                        used += len(chunk.encode("utf-8"))
                        yield chunk
            if used >= budget:
                break


def _damaged(damage: Damage, documents: int, read_bytes: int, fmt: str, accept: bool) -> None:
    message = describe_damage(damage, documents, read_bytes, fmt)
    if not accept:
        raise DamagedInput(f"{message}. No tokenizer was written. {DAMAGE_ADVICE}.")
    log.warning("%s; accepted (--accept-damaged-files): sampling goes on with the next file", message)


class _Kept:
    """An iterator for sentencepiece that keeps what it raised and counts what it gave:
    sentencepiece turns an exception from its sentence iterator into a RuntimeError of its own."""

    def __init__(self, items: Iterable[str]):
        self._items = iter(items)
        self.error: Optional[Exception] = None
        self.count = 0

    def __iter__(self) -> "_Kept":
        return self

    def __next__(self) -> str:
        try:
            item = next(self._items)
        except StopIteration:
            raise
        except Exception as error:
            self.error = error
            raise
        self.count += 1
        return item


def train_tokenizer(files: Sequence[str], model_prefix: str, vocab_size: int = 32000,
                    sample_bytes: int = 200 << 20, fmt: Optional[str] = None,
                    character_coverage: float = 0.9995, threads: int = os.cpu_count() or 1,
                    reader_options: Optional[Dict] = None, verbose: bool = False,
                    accept_damaged_files: bool = False) -> dict:
    """Train and write <model_prefix>.model; returns a summary with the special-token ids."""
    model = io.BytesIO()
    sentences = _Kept(sample_sentences(files, sample_bytes, fmt, reader_options, accept_damaged_files))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            byte_fallback=True,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=2,
            pad_piece=SPECIAL_PIECES["pad"],
            control_symbols=CONTROL_SYMBOLS,
            hard_vocab_limit=False,
            num_threads=threads,
            minloglevel=0 if verbose else 2,
        )
    except RuntimeError as error:
        if sentences.error is not None:
            raise sentences.error from None
        if not sentences.count:
            raise ValueError(f"no text to train on in {len(files)} input file(s): every record was skipped "
                             "(bad records) or filtered; check --input, --format and the keys") from error
        raise ValueError(f"sentencepiece could not train on {len(files)} input file(s): {error}") from error
    path = Path(f"{model_prefix}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".model.tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, path)
    tokenizer = GLMTokenizer(str(path))
    return {"model": str(path), "vocab_size": tokenizer.vocab_size, "special_ids": tokenizer.special.as_dict()}
