"""Writing captions: the frozen LM, its cached features, the guided decoder, beam search."""
