"""newsdl: deep learning on news articles, from raw articles to trained task heads."""

__version__ = "0.1.0"
