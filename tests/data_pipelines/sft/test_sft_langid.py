"""Code language ID: a small fastText model trained on real local source files, labelled by extension, identifies
snippets of held-out files (never seen in training) above a floor, per language."""

import glob
import os
import shutil
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
    assert data.train_keys and data.held_out_keys and not data.train_keys & data.held_out_keys
    assert all(code_langid.is_held_out(key, 20) for key in data.held_out_keys)
    assert not any(code_langid.is_held_out(key, 20) for key in data.train_keys)
    assert not any(os.path.isabs(key) for key in data.held_out_keys | data.train_keys)


def test_the_split_and_the_accuracy_do_not_depend_on_where_the_tree_lives(tmp_path):
    """The same files under two different prefixes (as in two clones' .venv) give the same split and model."""
    stdlib = sysconfig.get_paths()["stdlib"]
    go_roots = sorted(glob.glob("/usr/share/go-*/src"))
    if not go_roots:
        pytest.skip("no Go sources (golang-src, scripts/apt-packages.txt)")
    trees = []
    for prefix in ("a", "b/nested/deeper"):
        tree = tmp_path / prefix / "src"
        for package in ("json", "email", "xml", "asyncio"):
            shutil.copytree(os.path.join(stdlib, package), tree / "py" / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for package in ("fmt", "strings", "bufio", "sort", "net/http"):
            shutil.copytree(os.path.join(go_roots[0], package), tree / "go" / package)
        trees.append(str(tree))
    config = code_langid.LangIdConfig(files_per_language=40, snippets_per_file=2, min_files=20, epochs=10)
    first, second = (code_langid.build_dataset(config, [tree], ("Python", "Go")) for tree in trees)
    assert first.held_out_keys == second.held_out_keys and first.train_keys == second.train_keys
    assert first.train == second.train and first.held_out == second.held_out
    accuracies = [code_langid.accuracy_per_language(code_langid.CodeLanguageIdentifier.train(data.train, config),
                                                    data.held_out)["all"][0] for data in (first, second)]
    assert min(accuracies) >= FLOOR_ALL and abs(accuracies[0] - accuracies[1]) < 0.03, accuracies


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
    assert main(["langid-train", "--output", str(tmp_path / "langid.bin"), "--files_per_language", "20", *roots]) == 0
    assert main(["langid-eval", "--model", str(tmp_path / "langid.bin"), "--files_per_language", "20", *roots]) == 0
    out = capsys.readouterr().out
    assert "langid-train:" in out and out.count("  Python ") == 2 and out.count("  Go ") == 2
