"""Reference implementations of the homework's models: plain PyTorch, no web code."""
