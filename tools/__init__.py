"""Repository tooling (not part of the package learners import): stamping and running the notebooks."""
