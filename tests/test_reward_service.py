"""The reward service: the HTTP contract as plain functions (unit), then the real Serve deployment (`ray`)."""

import base64
import io
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from spatialrl.config import ConfigError
from spatialrl.reward.api import (
    LimitsConfig, RequestError, ServeRewardConfig, check_auth, check_length, check_route, decode_image_b64,
    encode_image_b64, parse_score_request, token_digest,
)

LIMITS = LimitsConfig(max_items=4, max_body_bytes=200_000, max_image_bytes=50_000, max_image_pixels=128 * 128,
                      max_prompt_chars=300)
JSON = "application/json"


def png_b64(size=(32, 32), colour=(200, 30, 30)) -> str:
    return encode_image_b64(Image.new("RGB", size, colour))


def body(items) -> bytes:
    return json.dumps({"items": items}).encode()


def status_of(raw: bytes, content_type=JSON, limits=LIMITS) -> int:
    with pytest.raises(RequestError) as err:
        parse_score_request(raw, content_type, limits)
    assert err.value.message  # every error says something
    return err.value.status


def test_parse_good_request_decodes_png_and_jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (0, 0, 255)).save(buf, format="JPEG")
    jpeg = base64.b64encode(buf.getvalue()).decode()
    prompts, images = parse_score_request(
        body([{"prompt": "a red square", "image": png_b64()}, {"prompt": "blue", "image": "data:image/jpeg;base64," + jpeg}]),
        "application/json; charset=utf-8", LIMITS)
    assert prompts == ["a red square", "blue"]
    assert images[0].size == (32, 32) and images[0].getpixel((3, 3)) == (200, 30, 30)
    assert images[1].size == (20, 10) and images[1].mode == "RGB"


BAD_BODIES = {
    "malformed json": (b"{not json", 400),
    "not an object": (b"[1, 2]", 400),
    "no items": (b'{"images": []}', 400),
    "items not a list": (b'{"items": {"prompt": "x"}}', 400),
    "empty items": (body([]), 400),
    "too many items": (body([{"prompt": "p", "image": png_b64((4, 4))}] * 5), 413),
    "item not an object": (body(["a red square"]), 400),
    "missing image": (body([{"prompt": "p"}]), 400),
    "missing prompt": (body([{"image": png_b64()}]), 400),
    "prompt not a string": (body([{"prompt": 3, "image": png_b64()}]), 400),
    "empty prompt": (body([{"prompt": "   ", "image": png_b64()}]), 400),
    "overlong prompt": (body([{"prompt": "x" * 301, "image": png_b64()}]), 400),
    "image not a string": (body([{"prompt": "p", "image": [1, 2]}]), 400),
    "image not base64": (body([{"prompt": "p", "image": "%%%not base64%%%"}]), 400),
    "base64 of text": (body([{"prompt": "p", "image": base64.b64encode(b"hello world").decode()}]), 400),
    "too many pixels": (body([{"prompt": "p", "image": png_b64((200, 200))}]), 413),
    "image over byte limit": (body([{"prompt": "p", "image": base64.b64encode(b"\0" * 60_000).decode()}]), 413),
    "body over byte limit": (b" " * 200_001, 413),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_bodies_get_their_4xx(case):
    raw, status = BAD_BODIES[case]
    assert status_of(raw) == status


def test_wrong_content_type_is_415_and_gif_is_400():
    assert status_of(body([{"prompt": "p", "image": png_b64()}]), content_type="text/plain") == 415
    assert status_of(body([{"prompt": "p", "image": png_b64()}]), content_type=None) == 415
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    with pytest.raises(RequestError, match="GIF image: send PNG or JPEG") as err:
        decode_image_b64(base64.b64encode(buf.getvalue()).decode(), LIMITS)
    assert err.value.status == 400


def test_routes_length_and_auth():
    assert check_route("/v1/score", "POST") == "/v1/score"
    assert check_route("/healthz/", "get") == "/healthz"
    for path, method, status in [("/v2/score", "POST", 404), ("/", "GET", 404), ("/v1/score", "GET", 405),
                                 ("/healthz", "POST", 405)]:
        with pytest.raises(RequestError) as err:
            check_route(path, method)
        assert err.value.status == status
    check_length("100", LIMITS)
    for value, status in [("200001", 413), ("lots", 400)]:
        with pytest.raises(RequestError) as err:
            check_length(value, LIMITS)
        assert err.value.status == status
    check_auth(None, None)  # no token configured: open
    digest = token_digest("s3cret")
    check_auth("Bearer s3cret", digest)
    for header in (None, "", "Bearer ", "Basic s3cret", "Bearer wrong"):
        with pytest.raises(RequestError) as err:
            check_auth(header, digest)
        assert err.value.status == 401 and "s3cret" not in err.value.message


def test_config_validation(monkeypatch):
    with pytest.raises(ConfigError, match="--checkpoint"):
        ServeRewardConfig().validate()
    with pytest.raises(ConfigError, match="port=0"):
        ServeRewardConfig(checkpoint="x", port=0).validate()
    with pytest.raises(ConfigError, match="HeadOnly .* or EveryNode"):
        ServeRewardConfig(checkpoint="x", proxy_location="Everywhere").validate()
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    with pytest.raises(ConfigError, match="export NO_SUCH_TOKEN_VAR"):
        ServeRewardConfig(checkpoint="x", auth_token_env="NO_SUCH_TOKEN_VAR").validate()
    cfg = ServeRewardConfig(checkpoint="x")
    cfg.replicas.min_replicas, cfg.replicas.max_replicas = 3, 2
    with pytest.raises(ConfigError, match="min_replicas <= max_replicas"):
        cfg.replicas.validate()


def test_job_dry_run_and_missing_checkpoint(tmp_path, capsys):
    from jobs.serve_reward import main

    assert main(["--checkpoint", str(tmp_path), "--set", "port=8123", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "port: 8123" in out and "host: 127.0.0.1" in out
    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "spatialscore_config.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ ray tier


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory, one_torch_thread):
    from ray import serve

    from jobs.serve_reward import deploy
    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel

    ckpt = tmp_path_factory.mktemp("svc") / "ckpt"
    SpatialRewardModel(RewardModelConfig(lora_rank=4), seed=3).save_pretrained(ckpt)
    cfg = ServeRewardConfig(checkpoint=str(ckpt), port=free_port(), limits=LIMITS)
    cfg.replicas.num_cpus = 0.5
    cfg.batching.max_batch_size = 4
    handle = deploy(cfg)
    yield cfg, handle
    serve.shutdown()


@pytest.mark.ray
def test_service_scores_equal_the_scorer_and_bad_requests_get_4xx(service):
    from spatialrl.reward.scorer import SpatialScorer

    cfg, handle = service
    url = f"http://127.0.0.1:{cfg.port}"
    assert http(url + "/healthz")[0] == 200
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["the red circle is left of the blue square", "a green triangle above a red disc", "two shapes"]
    items = [{"prompt": p, "image": encode_image_b64(i)} for p, i in zip(prompts, images)]
    status, out = http(url + "/v1/score", body(items), {"Content-Type": JSON})
    assert status == 200, out
    expected = SpatialScorer.from_checkpoint(cfg.checkpoint, device="cpu").score(prompts, images)
    np.testing.assert_allclose(out["scores"], expected, atol=1e-5)
    assert out["model"]["checkpoint"] == cfg.checkpoint and out["model"]["backbone"]
    # the handle path (no HTTP hop) returns the same floats
    np.testing.assert_allclose(handle.score.remote(prompts, images).result(), expected, atol=1e-5)
    for case, (raw, want) in BAD_BODIES.items():
        status, out = http(url + "/v1/score", raw, {"Content-Type": JSON})
        assert status == want and out["error"], (case, status, out)
    assert http(url + "/v1/score", body(items), {"Content-Type": "text/plain"})[0] == 415
    assert http(url + "/nope")[0] == 404
    assert http(url + "/v1/score")[0] == 405
    assert http(url + "/healthz", b"{}", {"Content-Type": JSON}, method="POST")[0] == 405
    status, out = http(url + "/healthz")
    assert status == 200 and out["status"] == "ok"


@pytest.mark.ray
def test_service_with_token_refuses_unauthorised(service, monkeypatch):
    from ray import serve

    from jobs.serve_reward import deploy

    cfg, _ = service
    monkeypatch.setenv("SVC_TEST_TOKEN", "tok-123")
    from dataclasses import replace

    deploy(replace(cfg, auth_token_env="SVC_TEST_TOKEN"))
    url = f"http://127.0.0.1:{cfg.port}"
    item = body([{"prompt": "a red square", "image": png_b64()}])
    assert http(url + "/v1/score", item, {"Content-Type": JSON})[0] == 401
    assert http(url + "/v1/score", item, {"Content-Type": JSON, "Authorization": "Bearer nope"})[0] == 401
    assert http(url + "/healthz")[0] == 401
    status, out = http(url + "/v1/score", item, {"Content-Type": JSON, "Authorization": "Bearer tok-123"})
    assert status == 200 and len(out["scores"]) == 1
    deploy(cfg)  # back to the open app for the other tests of this module
    assert serve.status().applications[cfg.app_name].status == "RUNNING"


def test_serve_scorer_retries_a_lost_request_and_counts_it():
    """ServeScorer's retry loop (the handle is a stand-in here; the real one is exercised in test_grpo.py)."""
    import ray

    from spatialrl.grpo.rewards import ServeScorer

    class Response:
        def __init__(self, outcome):
            self.outcome = outcome

        def result(self, timeout_s=None):
            if isinstance(self.outcome, Exception):
                raise self.outcome
            return self.outcome

    class Method:
        def __init__(self, outcomes):
            self.outcomes = outcomes

        def remote(self, prompts, images):
            return Response(self.outcomes.pop(0))

    scorer = ServeScorer.__new__(ServeScorer)
    scorer.retries, scorer.timeout_s, scorer._retried = 2, 1.0, 0
    scorer.handle = type("Handle", (), {})()
    scorer.handle.score = Method([ray.exceptions.ActorUnavailableError("replica gone", b"x" * 16), [0.5, 1.5]])
    np.testing.assert_array_equal(scorer.score(["a", "b"], [0, 0]), np.array([0.5, 1.5], dtype=np.float32))
    assert scorer.pop_retries() == 1 and scorer.pop_retries() == 0
    scorer.handle.score = Method([ray.exceptions.ActorUnavailableError("gone", b"x" * 16)] * 3)
    with pytest.raises(RuntimeError, match="3 attempts failed"):
        scorer.score(["a"], [0])
