"""The paper's baselines and peers: nudging, ARGS, CARDS, best-of-N, Aligner."""
