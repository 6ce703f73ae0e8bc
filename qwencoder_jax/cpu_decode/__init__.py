"""CPU decoding, opt-in: the few-rows matmul kernel, block-quantised (GGUF) weights and the interceptor using them."""
