"""Rendering ``matchmill report``: the report model of the benchmark history (:mod:`.report`), its
Markdown / HTML (:mod:`.render`), plots and example-pair drawings (:mod:`.figures`)."""
