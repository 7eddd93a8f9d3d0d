"""ADClick's defect-specific language prompts (Sec. 3.3): a prompt book from templates, BERT word features of
every prompt computed once per (category, defect type), averaged as in Eq. 6.

The authors' ChatGPT sentences were never published (only the instruction per object and defect type), so the
prompts are written from templates in `config/prompts/adclick.yaml` (see its header). With random weights (demo)
the tokenizer is a word-level vocabulary built from the prompt book with the `tokenizers` library; with pretrained
weights it is BERT-base-uncased's WordPiece vocabulary from the local weights cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, BertTokenizerFast, PreTrainedTokenizerFast

from defectbench.data.images import DataError
from defectbench.io import load_yaml
from defectbench.methods.weights import verify_weights

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


@dataclass(frozen=True)
class PromptBook:
    """Prompt sentences per (dataset, category, defect type), expanded from templates (deterministic)."""

    path: Path
    templates: tuple[str, ...]
    objects: dict[str, dict[str, str]]  # dataset -> category -> object phrase
    defects: dict[str, dict[str, dict[str, str]]]  # dataset -> category -> defect type -> defect phrase

    @classmethod
    def load(cls, path: str | Path) -> PromptBook:
        path = Path(path)
        if not path.exists():
            raise DataError(
                f"prompt file {path} does not exist; it ships with defectbench under config/prompts/"
            )
        spec = load_yaml(path.read_text())
        try:
            return cls(path, tuple(spec["templates"]), spec["objects"], spec["defects"])
        except (KeyError, TypeError) as err:
            raise DataError(f"{path} lacks templates/objects/defects ({err}); see its header") from err

    def defect_types(self, dataset: str, category: str) -> list[str]:
        """Every defect type of a unit with prompts (ADClick-Seg's inference runs over all of them)."""
        types = self.defects.get(dataset, {}).get(category)
        if not types:
            raise DataError(
                f"{self.path} has no defect types for {dataset}/{category}; add them to the prompt file"
            )
        return sorted(types)

    def sentences(self, dataset: str, category: str, defect_type: str) -> list[str]:
        """The prompts of one defect type: every template with the object and defect phrases filled in."""
        types = self.defects.get(dataset, {}).get(category, {})
        if defect_type not in types:
            raise DataError(
                f"defect type {defect_type!r} of {dataset}/{category} has no prompt in {self.path}; known: "
                f"{sorted(types)}. Add it under defects.{dataset}.{category} (or set language: false)"
            )
        obj = self.objects[dataset][category]
        return [t.format(object=obj, defect=types[defect_type]).lower() for t in self.templates]

    def all_sentences(self) -> list[str]:
        return [
            s
            for dataset, categories in sorted(self.defects.items())
            for category, types in sorted(categories.items())
            for defect in sorted(types)
            for s in self.sentences(dataset, category, defect)
        ]


def word_level_tokenizer(sentences: list[str]) -> PreTrainedTokenizerFast:
    """A BERT-style ([CLS] words [SEP]) word-level tokenizer whose vocabulary is the words of `sentences`."""
    normalizer = normalizers.Sequence([normalizers.Lowercase()])
    pre = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for s in sentences for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(s))})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


class LanguageEncoder:
    """Frozen BERT (ADClick fine-tunes only the pixel-word attention): sentences -> word features and masks."""

    def __init__(self, book: PromptBook, bert: dict[str, Any], pretrained: bool, weights: str, seed: int):
        if pretrained:  # the registry's directory (config, weights, vocab), verified; never a hub
            directory = verify_weights(weights)
            self.tokenizer: PreTrainedTokenizerFast = BertTokenizerFast(
                vocab_file=str(directory / "vocab.txt"), do_lower_case=True
            )
            self.model = BertModel.from_pretrained(directory, add_pooling_layer=False, local_files_only=True)
            config = self.model.config
        else:
            self.tokenizer = word_level_tokenizer(book.all_sentences())
            config = BertConfig(**{**bert, "vocab_size": len(self.tokenizer)})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = BertModel(config, add_pooling_layer=False)
        self.model.eval().requires_grad_(False)
        self.dim = config.hidden_size

    @torch.no_grad()
    def encode(self, sentences: list[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, max_words, C) last-layer word features and the (n, max_words) mask of real tokens."""
        batch = self.tokenizer(
            sentences, padding="max_length", truncation=True, max_length=max_words, return_tensors="pt"
        )
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state, batch["attention_mask"].float()


def prompt_features(
    encoder: LanguageEncoder,
    book: PromptBook,
    dataset: str,
    category: str,
    defects: list[str],
    max_words: int,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Word features of every prompt of each defect type (computed once; Eq. 6 averages them)."""
    return {d: encoder.encode(book.sentences(dataset, category, d), max_words) for d in defects}


def averaged(features: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: the word features averaged over a defect type's prompts (mask: a word present in any prompt)."""
    words, mask = features
    return words.mean(dim=0), mask.max(dim=0).values
