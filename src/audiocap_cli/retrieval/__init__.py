"""Finding guidance: the caption index, the retrieval kinds, label space, the text bridge."""
