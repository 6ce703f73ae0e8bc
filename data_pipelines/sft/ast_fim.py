"""FIM-instruction samples whose middle is a whole syntactic unit (report section 4.2, "Mixed Tuning").

Design notes: docs/DATA.md, section `data_pipelines/sft/ast_fim.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os

import numpy as np

from data_pipelines.sft.tally import Problem, Tally
from qwencoder_jax.data import fim  # numpy only: no TensorFlow, no model
from qwencoder_jax.data.special_tokens import ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

_GRAMMARS = {"Python": "tree_sitter_python", "JavaScript": "tree_sitter_javascript", "Go": "tree_sitter_go",
             "Java": "tree_sitter_java", "C": "tree_sitter_c", "C++": "tree_sitter_cpp", "Rust": "tree_sitter_rust"}
EXTENSIONS = {".py": "Python", ".js": "JavaScript", ".mjs": "JavaScript", ".go": "Go", ".java": "Java", ".c": "C",
              ".cc": "C++", ".cpp": "C++", ".hpp": "C++", ".rs": "Rust"}

_C_STATEMENTS = ("if_statement", "for_statement", "while_statement", "return_statement", "expression_statement",
                 "declaration", "function_definition", "switch_statement")
_C_EXPRESSIONS = ("call_expression", "binary_expression", "field_expression", "assignment_expression",
                  "conditional_expression", "subscript_expression")
# language -> level -> node types eligible as a middle.
NODE_TYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "Python": {"body": ("block",),
               "statement": ("if_statement", "for_statement", "while_statement", "return_statement", "try_statement",
                             "with_statement", "expression_statement", "function_definition", "class_definition"),
               "expression": ("call", "binary_operator", "boolean_operator", "comparison_operator", "subscript",
                              "list_comprehension", "dictionary", "list", "conditional_expression", "attribute")},
    "JavaScript": {"body": ("statement_block",),
                   "statement": ("if_statement", "for_statement", "for_in_statement", "while_statement",
                                 "return_statement", "expression_statement", "lexical_declaration",
                                 "variable_declaration", "function_declaration", "class_declaration"),
                   "expression": ("call_expression", "binary_expression", "member_expression", "arrow_function",
                                  "ternary_expression", "object", "array", "template_string")},
    "Go": {"body": ("block",),
           "statement": ("if_statement", "for_statement", "return_statement", "expression_statement",
                         "short_var_declaration", "assignment_statement", "function_declaration",
                         "method_declaration", "expression_switch_statement"),
           "expression": ("call_expression", "binary_expression", "selector_expression", "composite_literal",
                          "index_expression", "func_literal")},
    "Java": {"body": ("block",),
             "statement": ("if_statement", "for_statement", "enhanced_for_statement", "while_statement",
                           "return_statement", "expression_statement", "local_variable_declaration",
                           "method_declaration", "try_statement"),
             "expression": ("method_invocation", "binary_expression", "object_creation_expression", "field_access",
                            "lambda_expression", "ternary_expression", "array_access")},
    "C": {"body": ("compound_statement",), "statement": _C_STATEMENTS, "expression": _C_EXPRESSIONS},
    "C++": {"body": ("compound_statement",), "statement": _C_STATEMENTS + ("for_range_loop",),
            "expression": _C_EXPRESSIONS + ("lambda_expression",)},
    "Rust": {"body": ("block",),
             "statement": ("let_declaration", "expression_statement", "function_item", "impl_item"),
             "expression": ("call_expression", "binary_expression", "field_expression", "macro_invocation",
                            "match_expression", "closure_expression", "if_expression")},
}


@dataclasses.dataclass(frozen=True)
class AstFimConfig:
    level_weights: tuple[tuple[str, float], ...] = (("body", 1.0), ("statement", 2.0), ("expression", 1.0))
    min_middle_chars: int = 4
    max_middle_chars: int = 2000
    max_file_chars: int = 24_000  # about 7K tokens: the sample fits stage 3's 8,192 context whole
    seed: int = 0

    def __post_init__(self):
        if self.min_middle_chars < 1 or self.max_middle_chars < self.min_middle_chars:
            raise ValueError(f"AstFimConfig: need 1 <= min_middle_chars <= max_middle_chars, got "
                             f"{self.min_middle_chars}, {self.max_middle_chars}")
        if any(level not in ("body", "statement", "expression") or weight < 0 for level, weight in self.level_weights):
            raise ValueError(f"AstFimConfig.level_weights {self.level_weights}: levels are body, statement, "
                             f"expression with non-negative weights")


@dataclasses.dataclass(frozen=True)
class AstFimSample:
    key: str
    language: str
    level: str
    node_type: str
    prefix: str
    middle: str
    suffix: str


@functools.lru_cache(maxsize=None)
def parser_for(language: str):
    # tree-sitter's native parsers load only when parsing (chatml imports this module)
    import tree_sitter

    if language not in _GRAMMARS:
        raise ValueError(f"no tree-sitter grammar for {language!r}; supported: {sorted(_GRAMMARS)}")
    module = importlib.import_module(_GRAMMARS[language])
    grammar = module.language_cpp() if hasattr(module, "language_cpp") else module.language()
    return tree_sitter.Parser(tree_sitter.Language(grammar))


@functools.lru_cache(maxsize=None)
def _query(language: str):
    # tree-sitter's native parsers load only when parsing (chatml imports this module)
    import tree_sitter

    types = [node_type for level in NODE_TYPES[language].values() for node_type in level]
    return tree_sitter.Query(parser_for(language).language, " ".join(f"({t}) @{t}" for t in types))


def candidates(root, language: str, config: AstFimConfig) -> dict[str, list]:
    """level -> eligible nodes (sized within the config's bounds, error-free), in document order.

    A tree-sitter query finds them in C rather than visiting every node from Python."""
    # tree-sitter's native parsers load only when parsing (chatml imports this module)
    import tree_sitter

    level_of = {node_type: level for level, types in NODE_TYPES[language].items() for node_type in types}
    found: dict[str, list] = {level: [] for level in NODE_TYPES[language]}
    for node_type, nodes in tree_sitter.QueryCursor(_query(language)).captures(root).items():
        level = level_of[node_type]
        for node in nodes:
            size = node.end_byte - node.start_byte
            if config.min_middle_chars <= size <= config.max_middle_chars and not node.has_error:
                found[level].append(node)
    for nodes in found.values():
        nodes.sort(key=lambda node: (node.start_byte, -node.end_byte, node.type))
    return found


def make_sample(source: str, language: str, key: str, config: AstFimConfig = AstFimConfig()
                ) -> tuple[AstFimSample | None, str]:
    """(sample, "") or (None, rejection reason)."""
    if len(source) > config.max_file_chars:
        return None, "too_large"
    if not source.strip():
        return None, "empty"
    data = source.encode("utf-8", "surrogatepass")
    tree = parser_for(language).parse(data)
    if tree.root_node.has_error:
        return None, "parse_error"
    found = candidates(tree.root_node, language, config)
    levels = [(level, weight) for level, weight in config.level_weights if found.get(level) and weight > 0]
    if not levels:
        return None, "no_eligible_node"
    rng = fim.rng_for(config.seed, key)  # the same file always gives the same sample, in any process
    weights = np.asarray([w for _, w in levels], np.float64)
    level = levels[int(rng.choice(len(levels), p=weights / weights.sum()))][0]
    node = found[level][int(rng.integers(len(found[level])))]
    try:
        prefix = data[:node.start_byte].decode("utf-8")
        middle = data[node.start_byte:node.end_byte].decode("utf-8")
        suffix = data[node.end_byte:].decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    return AstFimSample(key, language, level, node.type, prefix, middle, suffix), ""


def samples_from_files(paths, tally: Tally, config: AstFimConfig = AstFimConfig(), root: str = ""):
    """One sample per file (the language from its extension); every file is counted kept or rejected."""
    for path in paths:
        language = EXTENSIONS.get(os.path.splitext(path)[1].lower())
        if language is None:
            tally.reject(Problem(0, "unsupported_language", path))
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
        except UnicodeDecodeError:
            tally.reject(Problem(0, "invalid_utf8", path))
            continue
        sample, reason = make_sample(source, language, os.path.relpath(path, root) if root else path, config)
        if sample is None:
            tally.reject(Problem(0, reason, path))
            continue
        tally.keep()
        yield sample


# ------------------------------------------------------------------ output forms

CHATML_INSTRUCTION = ("Fill in the code missing at {hole} in this {language} file. Answer with the missing code "
                      "only: a complete {level}.\n\n{prefix}{hole}{suffix}")
HOLE = "<MISSING CODE>"


def to_chatml(sample: AstFimSample) -> dict:
    user = CHATML_INSTRUCTION.format(hole=HOLE, language=sample.language, level=sample.level,
                                     prefix=sample.prefix, suffix=sample.suffix)
    return {"id": "ast-fim:" + sample.key, "language": sample.language,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": sample.middle}]}


def to_json(sample: AstFimSample) -> str:
    return json.dumps(dataclasses.asdict(sample), ensure_ascii=False)


def psm_ids(sample: AstFimSample, vocabulary) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of the PSM sample: loss on the middle and <|endoftext|> only."""
    special = vocabulary.special_ids
    prefix, suffix, middle = vocabulary.encode_batch([sample.prefix, sample.suffix, sample.middle])
    head = [special[FIM_PREFIX]] + prefix + [special[FIM_SUFFIX]] + suffix + [special[FIM_MIDDLE]]
    ids = head + middle + [special[ENDOFTEXT]]
    return ids, [0] * len(head) + [1] * (len(middle) + 1)
