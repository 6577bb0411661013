"""Closed forms of the seed papers: what a measured number is compared against."""
