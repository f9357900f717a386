"""Speed and memory benchmarks of the course's code against the libraries it teaches (see benchmarks/README.md).

``python -m benchmarks.run`` (or ``make bench``) runs every section and writes the table to ``benchmarks/results/``.
"""
