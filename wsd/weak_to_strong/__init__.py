"""WSD itself: the reference passes, the batched core and its HF and vLLM engines, the draft cache."""
