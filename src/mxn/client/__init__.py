"""Client tools for any OpenAI-compatible server (mxn, vLLM, a public MaaS): streaming, batches, benchmarks.

from mxn.client import run_batch, load_results
requests = ((row["id"], {"model": "qwen", "messages": [{"role": "user", "content": row["text"]}]}) for row in rows)
summary = asyncio.run(run_batch(requests, "out.jsonl", base_url="http://127.0.0.1:8000/v1", api_key="sk-..."))
answers = load_results("out.jsonl")   # {custom_id: response body}
"""

from mxn.client.batch import BatchSummary, load_results, read_requests, run_batch
from mxn.client.stream import StreamResult, stream_chat

__all__ = ["BatchSummary", "StreamResult", "load_results", "read_requests", "run_batch", "stream_chat"]
