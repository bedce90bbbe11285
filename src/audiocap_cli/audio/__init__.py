"""Audio in: decoding and resampling files, frozen encoders, cached frame features."""
