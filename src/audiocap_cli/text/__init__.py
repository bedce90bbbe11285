"""Caption text: agreement (CIDEr-D, F-mean), sentence embeddings, BERTScore, similarity labels."""
