"""The dataset's text tokenizer: BPE trained locally, loaded as a HF fast tokenizer.

Trained with ``tokenizers`` on the captions and questions at synth/ingest time
(character BPE over lower-cased, punctuation-split words marked with a
SentencePiece-style ``▁`` word start),
saved as ``DIR/tokenizer.json`` and loaded through
``transformers.PreTrainedTokenizerFast`` — no hub downloads. Special tokens
have fixed ids so the model config can rely on them: ``[PAD]`` = 0 (the
default ``modalities.text.pad_id``), ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3,
``[MASK]`` 4. Encoded text is ``[CLS] words [SEP]``.

Why BPE and not WordPiece: ``WordPieceTrainer`` gives a different vocabulary
on every run over the same texts (continuing-subword ids follow hash-map
order and break merge ties: huggingface/tokenizers#1794), so re-synthesising
the benchmark changed the text token ids and every run's numbers with them.
Plain BPE training is deterministic (tested). Datasets built with the
earlier WordPiece tokenizer keep working: the manifest points at their file.

Use::

    path = train_tokenizer(texts, DIR / "tokenizer.json", vocab_size=1000)
    tok = load_tokenizer(path)
    check_tokenizer(tok, cfg)      # ValueError naming modalities.text.vocab_size / pad_id
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID = 0
#: default vocabulary size: below the tiny config's modalities.text.vocab_size (1024)
DEFAULT_VOCAB_SIZE = 1000


def train_tokenizer(texts: Iterable[str], path: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  min_frequency=1, show_progress=False)
    tok.train_from_iterator((t for t in texts if t and t.strip()), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    if tok.token_to_id("[PAD]") != PAD_ID:  # trainer puts specials first; guard the contract anyway
        raise RuntimeError(f"tokenizer trainer gave [PAD] id {tok.token_to_id('[PAD]')}, expected {PAD_ID}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@lru_cache(maxsize=8)
def load_tokenizer(path: str | Path):
    """A ``PreTrainedTokenizerFast`` (cached per process: Ray workers load it once)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file missing (the dataset manifest points here)")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def check_tokenizer(tok, cfg, path: str | Path = "tokenizer") -> None:
    """The model's text config must cover the tokenizer: clear errors naming the config field."""
    text = cfg.modalities["text"]
    if len(tok) > text.vocab_size:
        raise ValueError(
            f"modalities.text.vocab_size ({text.vocab_size}) is smaller than the dataset tokenizer "
            f"{path} ({len(tok)} tokens): raise modalities.text.vocab_size to >= {len(tok)}"
        )
    if tok.pad_token_id != text.pad_id:
        raise ValueError(
            f"modalities.text.pad_id ({text.pad_id}) differs from the dataset tokenizer's [PAD] id "
            f"({tok.pad_token_id}) in {path}: set modalities.text.pad_id={tok.pad_token_id}"
        )
