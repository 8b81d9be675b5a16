"""The synthetic arithmetic task: generators, the shift registry, formatting and grading.

Pure Python: no torch, no numpy, so the server and any edge box can import it.
"""
