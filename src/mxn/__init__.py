"""mxn: M models on N kinds of chips behind one OpenAI-compatible API."""

__version__ = "0.1.0"
