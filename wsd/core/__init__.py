"""Model-free foundations: the switch rule, prompt formats, typed config blocks, files and keys."""
