"""The special tokens (docs/FORMATS.md, report Table 2) and the Qwen2.5 vocabulary sizes.

A module of its own so that text transforms (fim.py) can use them without importing seqio and TensorFlow.
The ids are part of the checkpoint format: never renumber them.
"""

import types

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_PAD = "<|fim_pad|>"
REPO_NAME = "<|repo_name|>"
FILE_SEP = "<|file_sep|>"

SPECIAL_TOKENS = types.MappingProxyType({
    ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645,
    FIM_PREFIX: 151659, FIM_MIDDLE: 151660, FIM_SUFFIX: 151661, FIM_PAD: 151662,
    REPO_NAME: 151663, FILE_SEP: 151664,
})

NUM_REGULAR_TOKENS = 151_643  # byte-level BPE tokens, ids 0..151642
NUM_TOKENS = 151_665  # plus the Qwen2.5 added tokens 151643..151664; later ids in the shipped file are dropped
PADDED_VOCAB_SIZE = 151_936  # embedding rows of the published checkpoints; rows >= NUM_TOKENS have no text
