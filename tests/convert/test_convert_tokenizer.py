"""orbax-to-hf writes the Qwen tokenizer files beside the weights: transformers' AutoTokenizer loads the exported
directory and encodes code to the same ids as our vocabulary, with the ChatML chat template; a checkpoint with
another vocabulary gets no tokenizer rather than a wrong one."""

import flax.linen as nn
import jax
import numpy as np

from qwencoder_jax import checkpoints
from qwencoder_jax.convert import orbax_to_hf
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE, get_preset
from qwencoder_jax.model.transformer import Transformer

CODE = 'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # ünïcode\n'


def _checkpoint(directory, vocab_size):
    config = get_preset("tiny", vocab_size=vocab_size)
    model = Transformer(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    return checkpoints.save_model(directory, config, params)


def test_exported_directory_loads_in_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from qwencoder_jax.data.vocabulary import QwenVocabulary

    orbax_to_hf(_checkpoint(tmp_path / "ckpt", QWEN_VOCAB_SIZE), tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tokenizer.encode(CODE, add_special_tokens=False)
    assert ids == QwenVocabulary().encode(CODE)
    assert tokenizer.decode(ids) == CODE
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in chat


def test_other_vocabularies_get_no_tokenizer(tmp_path):
    orbax_to_hf(_checkpoint(tmp_path / "ckpt", 512), tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").exists()
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
