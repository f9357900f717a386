"""Chapter recipes: the settings and steps of one chapter's experiment, built from the blocks in :mod:`helpers`.

A building block (``helpers.model``, ``helpers.train``, ``helpers.decode``...) does one thing any chapter can use; a
recipe here fixes how one chapter uses them (its model size, data, budget, what it saves) so that a later chapter
can rerun or load that chapter's result: :mod:`~helpers.recipes.pretrain` (chapter 04), :mod:`~helpers.recipes.mlm`
(chapter 05), :mod:`~helpers.recipes.translation` (chapter 06).
"""
