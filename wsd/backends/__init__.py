"""Models and the engines that run them (transformers, vLLM), and the reward model."""
