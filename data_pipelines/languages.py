"""Programming language from a file's extension or name (The Stack / StarCoder2 conventions, >= 92 languages)."""

from __future__ import annotations

import posixpath

# language -> extensions (lower case, with dot). Names follow The Stack's `lang` field where it has one.
_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "Ada": (".adb", ".ads", ".ada"), "Agda": (".agda",), "Alloy": (".als",), "ANTLR": (".g4",),
    "AppleScript": (".applescript", ".scpt"), "Assembly": (".asm", ".s", ".nasm"), "Augeas": (".aug",),
    "AWK": (".awk",), "Batchfile": (".bat", ".cmd"), "Bluespec": (".bsv",), "C": (".c", ".h"),
    "C#": (".cs", ".csx"), "C++": (".cpp", ".cc", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".tpp"),
    "Clojure": (".clj", ".cljs", ".cljc", ".edn"), "CMake": (".cmake",), "COBOL": (".cob", ".cbl", ".cpy"),
    "CoffeeScript": (".coffee",), "Common Lisp": (".lisp", ".lsp", ".cl"), "Coq": (".v",), "Crystal": (".cr",),
    "CSS": (".css",), "CSV": (".csv",), "Cuda": (".cu", ".cuh"), "Cython": (".pyx", ".pxd", ".pxi"),
    "D": (".d",), "Dart": (".dart",), "Dockerfile": (".dockerfile",), "Elixir": (".ex", ".exs"),
    "Elm": (".elm",), "Emacs Lisp": (".el",), "Erlang": (".erl", ".hrl"), "F#": (".fs", ".fsi", ".fsx"),
    "Fortran": (".f", ".f90", ".f95", ".f03", ".f08", ".for"), "GLSL": (".glsl", ".vert", ".frag"),
    "Go": (".go",), "Gradle": (".gradle",), "GraphQL": (".graphql", ".gql"), "Groovy": (".groovy",),
    "Haskell": (".hs", ".lhs"), "HTML": (".html", ".htm", ".xhtml"), "Idris": (".idr",), "INI": (".ini", ".cfg"),
    "Isabelle": (".thy",), "Java": (".java",), "Java Server Pages": (".jsp",),
    "JavaScript": (".js", ".mjs", ".cjs", ".jsx"), "JSON": (".json", ".jsonl", ".geojson"),
    "Julia": (".jl",), "Jupyter Notebook": (".ipynb",), "Kotlin": (".kt", ".kts"), "Lean": (".lean",),
    "Less": (".less",), "Literate Agda": (".lagda",), "Literate CoffeeScript": (".litcoffee",),
    "Lua": (".lua",), "M4": (".m4",), "Makefile": (".mk", ".mak"), "Markdown": (".md", ".markdown"),
    "Mathematica": (".nb", ".wl"), "MATLAB": (".mat",), "Nim": (".nim",), "Nix": (".nix",),
    "Objective-C": (".m",), "Objective-C++": (".mm",), "OCaml": (".ml", ".mli"), "Pascal": (".pas", ".pp"),
    "Perl": (".pl", ".pm", ".t"), "PHP": (".php", ".phtml"), "PowerShell": (".ps1", ".psm1", ".psd1"),
    "Prolog": (".pro", ".prolog"), "Protocol Buffer": (".proto",), "Pug": (".pug",), "PureScript": (".purs",),
    "Python": (".py", ".pyi", ".pyw"), "R": (".r",), "Racket": (".rkt",), "reStructuredText": (".rst",),
    "RMarkdown": (".rmd",), "Ruby": (".rb", ".rake", ".gemspec"), "Rust": (".rs",), "SAS": (".sas",),
    "Sass": (".sass",), "Scala": (".scala", ".sc"), "Scheme": (".scm", ".ss"), "SCSS": (".scss",),
    "Shell": (".sh", ".bash", ".zsh", ".ksh"), "Smalltalk": (".st",), "Solidity": (".sol",),
    "SPARQL": (".sparql", ".rq"), "SQL": (".sql",), "Stan": (".stan",), "Standard ML": (".sml",),
    "Stata": (".do", ".ado"), "Swift": (".swift",), "SystemVerilog": (".sv", ".svh"), "Tcl": (".tcl",),
    "TeX": (".tex", ".sty", ".cls"), "Thrift": (".thrift",), "TOML": (".toml",), "TSV": (".tsv",),
    "TypeScript": (".ts", ".tsx", ".mts", ".cts"), "VHDL": (".vhd", ".vhdl"), "Verilog": (".vh",),
    "Visual Basic": (".vb", ".vbs", ".bas"), "Vue": (".vue",), "WebAssembly": (".wat", ".wast"),
    "XML": (".xml", ".xsd", ".xsl", ".xslt", ".svg", ".plist"), "XSLT": (), "YAML": (".yaml", ".yml"),
    "Zig": (".zig",), "Text": (".txt",),
}

# Files recognised by their whole name (build files without an extension).
_FILENAMES: dict[str, str] = {
    "dockerfile": "Dockerfile", "containerfile": "Dockerfile", "makefile": "Makefile", "gnumakefile": "Makefile",
    "cmakelists.txt": "CMake", "rakefile": "Ruby", "gemfile": "Ruby", "build.gradle": "Gradle",
    "jenkinsfile": "Groovy", "vagrantfile": "Ruby", "meson.build": "Meson", "build": "Starlark",
    "build.bazel": "Starlark", "workspace": "Starlark", "setup.cfg": "INI", "tox.ini": "INI",
    "pipfile": "TOML", "cargo.lock": "TOML", ".bashrc": "Shell", ".zshrc": "Shell", "configure.ac": "M4",
}

EXTENSION_TO_LANGUAGE: dict[str, str] = {ext: lang for lang, exts in _EXTENSIONS.items() for ext in exts}
LANGUAGES: frozenset[str] = frozenset(EXTENSION_TO_LANGUAGE.values()) | frozenset(_FILENAMES.values())

# Data-heavy formats get size/line limits of their own in filters.py.
DATA_LANGUAGES = frozenset({"JSON", "YAML", "CSV", "TSV", "XML", "TOML", "INI"})
# Prose formats: kept as code-adjacent documentation, not subject to code-only rules such as the alpha share.
PROSE_LANGUAGES = frozenset({"Markdown", "reStructuredText", "Text", "TeX", "RMarkdown"})


def language_for_path(path: str) -> str:
    """The language of a file path, or "" when neither its name nor its extension is known."""
    name = posixpath.basename(path.replace("\\", "/")).lower()
    if name in _FILENAMES:
        return _FILENAMES[name]
    if name.startswith("dockerfile.") or name.endswith(".dockerfile"):
        return "Dockerfile"
    if name.startswith("makefile."):
        return "Makefile"
    _, extension = posixpath.splitext(name)
    return EXTENSION_TO_LANGUAGE.get(extension, "")
