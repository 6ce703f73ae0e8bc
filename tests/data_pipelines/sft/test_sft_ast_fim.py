"""AST-FIM: over many real files, the middle is always one whole syntactic unit. The reassembled file is the
original, and re-parsing it finds a node of the recorded type spanning exactly the middle; Python and JavaScript
middles also parse on their own without errors."""

import glob
import os
import random
import sysconfig
import textwrap
import zipfile

import pytest

from data_pipelines.sft import ast_fim

FILES_PER_LANGUAGE = 150


def real_sources(language):
    """(key, text) of up to FILES_PER_LANGUAGE real files of the language on this machine."""
    if language == "Java":
        archives = sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip"))
        if not archives:
            pytest.skip("no JDK src.zip (Debian openjdk-17-source, scripts/apt-packages.txt)")
        with zipfile.ZipFile(archives[0]) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".java"))
            chosen = random.Random(0).sample(names, min(400, len(names)))
            texts = [(n, archive.read(n).decode("utf-8", "replace")) for n in chosen]
    else:
        # JavaScript: NodeSource's nodejs ships npm under /usr/lib/node_modules, Debian's under /usr/share/nodejs
        root = {"Python": sysconfig.get_paths()["stdlib"],
                "JavaScript": next((p for p in ("/usr/lib/node_modules", "/usr/share/nodejs") if os.path.isdir(p)),
                                   "/nonexistent"),
                "Go": (sorted(glob.glob("/usr/share/go-*/src")) or ["/nonexistent"])[0]}[language]
        extension = {"Python": ".py", "JavaScript": ".js", "Go": ".go"}[language]
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(extension))
        if not paths:
            pytest.skip(f"no {language} sources under {root} (scripts/apt-packages.txt installs them)")
        chosen = random.Random(0).sample(paths, min(400, len(paths)))
        texts = []
        for path in chosen:
            with open(path, encoding="utf-8", errors="replace") as handle:
                texts.append((path, handle.read()))
    return [(k, t) for k, t in texts if len(t) <= ast_fim.AstFimConfig().max_file_chars][:FILES_PER_LANGUAGE]


def spanning_types(root, start, end):
    node = root.descendant_for_byte_range(start, end)
    types = set()
    while node is not None and node.start_byte == start and node.end_byte == end:
        types.add(node.type)
        node = node.parent
    return types


@pytest.mark.parametrize("language", ["Python", "JavaScript", "Go", "Java"])
def test_middles_are_whole_syntactic_units_over_real_files(language):
    made, levels = 0, set()
    for key, text in real_sources(language):
        sample, reason = ast_fim.make_sample(text, language, key)
        if sample is None:
            assert reason in ("parse_error", "no_eligible_node", "empty"), reason
            continue
        made += 1
        levels.add(sample.level)
        assert sample.prefix + sample.middle + sample.suffix == text
        assert sample.middle.strip() and sample.node_type in ast_fim.NODE_TYPES[language][sample.level]
        data = text.encode("utf-8")
        start = len(sample.prefix.encode("utf-8"))
        tree = ast_fim.parser_for(language).parse(data)
        assert sample.node_type in spanning_types(tree.root_node, start, start + len(sample.middle.encode("utf-8")))
        if language in ("Python", "JavaScript") and sample.level != "body":
            column = len(sample.prefix) - (sample.prefix.rfind("\n") + 1)
            alone = textwrap.dedent(" " * column + sample.middle) if language == "Python" else sample.middle
            if language == "JavaScript" and sample.level == "expression":
                alone = f"({alone});"
            if language == "Python" and sample.level == "expression":
                alone = f"({alone.strip()})" if "\n" in alone else alone
            reparsed = ast_fim.parser_for(language).parse(alone.encode("utf-8")).root_node
            assert not reparsed.has_error, (key, sample.node_type, sample.middle[:200])
    assert made >= FILES_PER_LANGUAGE // 2, f"only {made} {language} samples from {FILES_PER_LANGUAGE} files"
    assert len(levels) >= 2  # middles are drawn from several levels: bodies, statements, expressions


def test_same_file_same_sample_and_rejections_are_reasons():
    source = "def f(x):\n    return x * 2\n"
    assert ast_fim.make_sample(source, "Python", "k")[0] == ast_fim.make_sample(source, "Python", "k")[0]
    assert ast_fim.make_sample("def f(:\n", "Python", "k") == (None, "parse_error")
    assert ast_fim.make_sample("   \n", "Python", "k") == (None, "empty")
    chat = ast_fim.to_chatml(ast_fim.make_sample(source, "Python", "k")[0])
    assert chat["messages"][1]["content"] in source and ast_fim.HOLE in chat["messages"][0]["content"]
    with pytest.raises(ValueError, match="no tree-sitter grammar"):
        ast_fim.make_sample(source, "COBOL", "k")
