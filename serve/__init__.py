"""The edge server: a fleet of exported variants behind an OpenAI-shaped HTTP API.

Never imports torch or transformers (numpy + onnxruntime + tokenizers + the web stack);
tests/test_layout.py checks it.
"""
