"""Scoring captions: pure metric functions and the paper's evaluation scopes."""
