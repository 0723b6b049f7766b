"""The embedded engine (needs torch and transformers: `pip install 'mxn[local]'`)."""
