"""Captioning many files: the Captioner, the JSON records, model directories and the registry."""
