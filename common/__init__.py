"""Plumbing every stage shares, below all of them: it imports nothing else of fracture.

- ``config``: frozen dataclass <- YAML preset <- CLI flags, with "did you mean".
- ``cli``: argparse with "did you mean" for a mistyped ``--flag``.
- ``files``: atomic writes, folder names and locks, sha256.
- ``accuracy_table``: accuracy.csv, the table every stage writes or reads.
- ``workers``: worker processes that die with their parent, and their progress queue.
- ``net``: loopback ports and waiting for a service to answer.
- ``progress``: progress bars for a terminal or a log file.
"""
