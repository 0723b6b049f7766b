"""GenStudio-only routes over raw HTTP: token_count, get_model_details, the model list."""

from __future__ import annotations

import json

from mxn.tokens import get_tokenizer
from tests.conftest import Server


def test_token_count_uses_the_models_real_tokenizer(server: Server) -> None:
    prompt = "你好，世界! Hello world"
    with server.client() as c:
        r = c.post(
            "/maas/qwen1.5-14b-chat/nvidia/token_count",
            json={"model": "qwen1.5-14b-chat", "chip": "nvidia", "prompt": prompt},
        )
    assert r.status_code == 200
    assert r.json() == {
        "model": "qwen1.5-14b-chat",
        "prompt": prompt,
        "token_count": get_tokenizer("qwen").count(prompt),
    }


def test_model_details_say_which_tokenizer_counts(server: Server) -> None:
    with server.client() as c:
        qwen = c.post(
            "/maas/qwen1.5-14b-chat/nvidia/get_model_details", json={"model": "qwen1.5-14b-chat", "chiptype": "nvidia"}
        ).json()
        glm = c.post("/maas/chatglm3-6b/nvidia/get_model_details", json={"model": "chatglm3-6b"}).json()
    assert qwen["context_length"] == 2048 and qwen["tokenizer"] == "qwen" and qwen["tokenizer_note"] is None
    assert qwen["hardware"] == {"chip_model": "H800", "count": 1, "engine": "vllm"}
    assert glm["context_length"] == 512
    assert "chatglm" in glm["tokenizer_note"] and "cl100k_base" in glm["tokenizer_note"]


def test_genstudio_model_list_shape_and_filters(server: Server) -> None:
    with server.client() as c:
        everything = c.get("/api/maas/user/v2/model/list").json()
        qwen_on_biren = c.get("/api/maas/user/v2/model/list", params={"family": "qwen", "chip": "biren"}).json()
        completion = c.get("/api/maas/user/v2/model/list", params={"kind": "completion"}).json()
    models = {m["model_name"]: m for m in everything["data"]["model_list"]}
    qwen = models["qwen1.5-14b-chat"]
    chips = sorted(json.loads(t["tag_extend_info"])["chipType"] for t in qwen["tag_list"] if t["tag_type"] == "gpu")
    assert chips == ["amd", "biren", "iluvatar", "nvidia"]
    assert '{"chipType": "nvidia"}' in [t["tag_extend_info"] for t in qwen["tag_list"]]
    assert {"accelerator E"} == {t["tag_name"] for t in qwen["tag_list"] if "biren" in t["tag_extend_info"]}
    assert qwen["context_length"] == 2048 and qwen["public"] is True and qwen["family"] == "qwen"
    assert [m["model_name"] for m in qwen_on_biren["data"]["model_list"]] == ["qwen1.5-14b-chat", "qwen-72b"]
    assert [m["model_name"] for m in completion["data"]["model_list"]] == ["qwen-72b"]


def test_health_and_readiness(server: Server) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
    assert ready["status"] == "ready" and ready["deployments"] == 13
