"""Front-end protocols: each turns its own request into the internal one and the internal answer back into its
wire format and error shape. The chain in `gateway/pipeline.py` is the same for all of them."""

from mxn.gateway.protocols.base import Protocol
from mxn.gateway.protocols.chat import CHAT
from mxn.gateway.protocols.completions import COMPLETIONS
from mxn.gateway.protocols.embeddings import EMBEDDINGS
from mxn.gateway.protocols.messages import MESSAGES
from mxn.gateway.protocols.responses import RESPONSES

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "MESSAGES", "RESPONSES", "Protocol"]
