"""Code language ID: a small fastText model trained on real local source files, labelled by extension, identifies
snippets of held-out files (never seen in training) above a floor, per language."""

import glob
import sysconfig

import pytest

from data_pipelines.sft import code_langid

FLOOR_ALL, FLOOR_EACH = 0.8, 0.6
LANGUAGES = ("Python", "Go", "Java", "C", "C++", "JavaScript", "Ruby", "Perl", "Markdown", "JSON", "HTML",
             "Assembly")


@pytest.fixture(scope="module")
def trained():
    roots = [sysconfig.get_paths()["stdlib"], "/usr/lib/node_modules", "/usr/share/nodejs",
             *glob.glob("/usr/share/go-*/src"),
             "/usr/lib/ruby", "/usr/share/perl", "/usr/include", *glob.glob("/usr/lib/jvm/*/lib/src.zip")[:1]]
    config = code_langid.LangIdConfig(files_per_language=100, snippets_per_file=3, min_files=30, epochs=10)
    data = code_langid.build_dataset(config, roots, LANGUAGES)
    if len(data.files) < 8:
        pytest.skip(f"only {sorted(data.files)} have sources here; run scripts/setup.sh (Debian source packages)")
    return data, code_langid.CodeLanguageIdentifier.train(data.train, config)


def test_held_out_files_are_never_trained_on(trained):
    data, _ = trained
    assert data.train_paths and data.held_out_paths and not data.train_paths & data.held_out_paths
    assert all(code_langid.is_held_out(path, 20) for path in data.held_out_paths)


def test_accuracy_on_held_out_files_is_above_the_floor_per_language(trained):
    data, identifier = trained
    accuracy = code_langid.accuracy_per_language(identifier, data.held_out)
    assert {"Python", "Go", "Java", "C", "JavaScript", "Ruby", "Perl"} <= set(accuracy)
    assert accuracy["all"][0] >= FLOOR_ALL, accuracy
    low = {language: value for language, (value, _) in accuracy.items() if value < FLOOR_EACH}
    assert not low, f"below {FLOOR_EACH}: {low}"


def test_prose_without_code_is_tagged_no_language_and_models_round_trip(trained, tmp_path):
    _, identifier = trained
    assert identifier.predict("hello")[0] == code_langid.NO_LANGUAGE
    assert identifier.predict("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(x)\n}\n")[0] == "Go"
    identifier.save(str(tmp_path / "m.bin"))
    loaded = code_langid.CodeLanguageIdentifier.load(str(tmp_path / "m.bin"))
    snippet = "def main():\n    for item in items:\n        print(item.name)\n"
    assert loaded.predict(snippet) == identifier.predict(snippet)
    with pytest.raises(FileNotFoundError, match="langid-train"):
        code_langid.CodeLanguageIdentifier.load(str(tmp_path / "missing.bin"))


def test_cli_trains_saves_and_evaluates_a_model(tmp_path, capsys):
    from data_pipelines.sft.__main__ import main

    go_roots = sorted(glob.glob("/usr/share/go-*/src"))
    if not go_roots:
        pytest.skip("no Go sources (golang-src, scripts/apt-packages.txt)")
    roots = ["--root", sysconfig.get_paths()["stdlib"], "--root", go_roots[0]]
    assert main(["langid-train", "--output", str(tmp_path / "langid.bin"), "--files-per-language", "20", *roots]) == 0
    assert main(["langid-eval", "--model", str(tmp_path / "langid.bin"), "--files-per-language", "20", *roots]) == 0
    out = capsys.readouterr().out
    assert "langid-train:" in out and out.count("  Python ") == 2 and out.count("  Go ") == 2
