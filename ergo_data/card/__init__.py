"""The data card of a curated set: card text, gallery, plots."""
