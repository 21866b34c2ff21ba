"""The reward service's config and HTTP contract, as plain code (no Ray): parse, validate, authorise.

`actors/reward_service.py` wraps SpatialScorer in a Ray Serve deployment and calls these functions for every
request, so every rule here is unit-tested without a server. JSON only, never pickle:

    POST /v1/score   {"items": [{"prompt": "...", "image": "<base64 PNG or JPEG>"}, ...]}
                  -> 200 {"scores": [float, ...], "model": {"checkpoint": "...", "backbone": "..."}}
    GET  /healthz -> 200 {"status": "ok"} once the replica has loaded the model

Every bad request is a `RequestError(status, message)`: 400 malformed or invalid, 401 missing or wrong bearer
token, 404 unknown route, 405 wrong method, 413 body or image over the limits, 415 wrong content type. The
message says what is wrong and how to fix it. The bearer token is compared by its SHA-256 digest (the
deployment is given the digest, never the token), in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import os
from dataclasses import dataclass, field

from PIL import Image

from spatialrl.config import ConfigError

SCORE_ROUTE = "/v1/score"
HEALTH_ROUTE = "/healthz"
ROUTES = {SCORE_ROUTE: "POST", HEALTH_ROUTE: "GET"}


class RequestError(Exception):
    """A client error: HTTP `status` and a message for the `{"error": ...}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ReplicaConfig:
    """Resources and autoscaling of the deployment's replicas (the `replicas` section)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0  # fractions allowed: several replicas (or GRPO roles) share one GPU
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None  # None = min_replicas
    target_ongoing_requests: float = 2.0  # per replica, the autoscaler's target
    max_ongoing_requests: int = 64  # per replica; more are queued by the proxy / handle

    def validate(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"replicas.num_cpus={self.num_cpus}, num_gpus={self.num_gpus}: use values >= 0")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"replicas.min_replicas={self.min_replicas}, max_replicas={self.max_replicas}: "
                              f"need 1 <= min_replicas <= max_replicas")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ConfigError(f"replicas.initial_replicas={self.initial_replicas}: must lie in "
                              f"[min_replicas, max_replicas] = [{self.min_replicas}, {self.max_replicas}]")
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1:
            raise ConfigError("replicas.target_ongoing_requests must be > 0 and max_ongoing_requests >= 1")


@dataclass
class BatchConfig:
    """`@serve.batch` settings (the `batching` section): requests (not items) per batch, and the wait."""

    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"batching.max_batch_size={self.max_batch_size}: use >= 1 (1 = no batching)")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batching.batch_wait_timeout_s={self.batch_wait_timeout_s}: use a value >= 0")


@dataclass
class LimitsConfig:
    """What one request may carry (the `limits` section)."""

    max_items: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 4 * 1024 * 1024  # decoded (not base64) bytes of one image
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 4000

    def validate(self) -> None:
        for name in ("max_items", "max_body_bytes", "max_image_bytes", "max_image_pixels", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name}={getattr(self, name)}: use a value >= 1")


@dataclass
class ServeRewardConfig:
    """The whole `jobs.serve_reward` config."""

    checkpoint: str = ""  # a SpatialScore checkpoint folder (jobs.train_reward's OUT/final)
    host: str = "127.0.0.1"  # HTTP bind address; 0.0.0.0 exposes the service to the network (set a token)
    port: int = 8000
    # Where Serve runs HTTP proxies: HeadOnly (one proxy, on the head node) or EveryNode (one per node, each
    # binding host:port there; for a cluster of separate machines behind a load balancer, with host 0.0.0.0)
    proxy_location: str = "HeadOnly"
    app_name: str = "spatialscore"
    device: str = "auto"
    scorer_batch_size: int = 16  # images per forward pass inside a replica (SpatialScorer's chunks)
    threads: int = 0  # torch CPU threads per replica; 0 = torch's default (all cores)
    # Name of an environment variable holding a bearer token; "" = no authentication (loopback use only).
    auth_token_env: str = ""
    replicas: ReplicaConfig = field(default_factory=ReplicaConfig)
    batching: BatchConfig = field(default_factory=BatchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def validate(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint is empty: pass --checkpoint DIR, a SpatialScore checkpoint folder "
                              "(jobs.train_reward writes OUT/final)")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port={self.port}: use a TCP port in 1..65535, e.g. 8000")
        if self.proxy_location not in ("HeadOnly", "EveryNode"):
            raise ConfigError(f"proxy_location={self.proxy_location!r}: use HeadOnly (one HTTP proxy, on the head "
                              f"node) or EveryNode (one per node)")
        if not self.host:
            raise ConfigError("host is empty: use 127.0.0.1 (this machine only) or 0.0.0.0 (all interfaces)")
        if self.threads < 0:
            raise ConfigError(f"threads={self.threads}: use 0 (torch's default) or a thread count")
        if self.scorer_batch_size < 1:
            raise ConfigError(f"scorer_batch_size={self.scorer_batch_size}: use a value >= 1")
        if self.auth_token_env and not os.environ.get(self.auth_token_env):
            raise ConfigError(f"auth_token_env={self.auth_token_env!r} names an environment variable that is not set "
                              f"or empty: export {self.auth_token_env}=<token> before starting the service")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_auth(authorization: str | None, digest: str | None) -> None:
    """401 unless `Authorization: Bearer <token>` matches `digest` (no check when digest is None)."""
    if digest is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(401, "missing bearer token: send the header 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token_digest(token.strip()), digest):
        raise RequestError(401, "wrong bearer token: use the token the service was started with")


def check_route(path: str, method: str) -> str:
    """The route for (path, method), or 404 / 405."""
    route = path.rstrip("/") or "/"
    if route not in ROUTES:
        raise RequestError(404, f"no route {path!r}: use POST {SCORE_ROUTE} or GET {HEALTH_ROUTE}")
    if method.upper() != ROUTES[route]:
        raise RequestError(405, f"{method.upper()} {route} is not allowed: use {ROUTES[route]} {route}")
    return route


def check_length(content_length: str | None, limits: LimitsConfig) -> None:
    """413 for a declared body over the byte limit, before it is read."""
    if content_length is None:
        return
    try:
        n = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from None
    if n > limits.max_body_bytes:
        raise RequestError(413, f"body of {n} bytes is over the limit of {limits.max_body_bytes}: send fewer or "
                                f"smaller images per request")


def parse_score_request(body: bytes, content_type: str | None, limits: LimitsConfig) -> tuple[list[str], list]:
    """(prompts, PIL images) from a /v1/score body, or a RequestError naming what is wrong."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"body of {len(body)} bytes is over the limit of {limits.max_body_bytes}: send "
                                f"fewer or smaller images per request")
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, f"content type {content_type!r}: send JSON with 'Content-Type: application/json'")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON ({exc}); send {{\"items\": [{{\"prompt\": ..., "
                                f"\"image\": <base64 PNG/JPEG>}}]}}") from None
    if not isinstance(data, dict) or "items" not in data:
        raise RequestError(400, "body must be a JSON object with an 'items' list")
    items = data["items"]
    if not isinstance(items, list):
        raise RequestError(400, f"'items' must be a list, got {type(items).__name__}")
    if not items:
        raise RequestError(400, "'items' is empty: send at least one {\"prompt\", \"image\"} item")
    if len(items) > limits.max_items:
        raise RequestError(413, f"{len(items)} items is over the limit of {limits.max_items} per request: split "
                                f"them over several requests")
    prompts, images = [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(400, f"items[{i}] must be an object with 'prompt' and 'image'")
        missing = [k for k in ("prompt", "image") if k not in item]
        if missing:
            raise RequestError(400, f"items[{i}] lacks {', '.join(repr(k) for k in missing)}")
        prompt, image = item["prompt"], item["image"]
        if not isinstance(prompt, str):
            raise RequestError(400, f"items[{i}].prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise RequestError(400, f"items[{i}].prompt is empty")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(400, f"items[{i}].prompt has {len(prompt)} characters, over the limit of "
                                    f"{limits.max_prompt_chars}")
        if not isinstance(image, str):
            raise RequestError(400, f"items[{i}].image must be a base64 string, got {type(image).__name__}")
        prompts.append(prompt)
        images.append(decode_image_b64(image, limits, f"items[{i}].image"))
    return prompts, images


def decode_image_b64(text: str, limits: LimitsConfig, where: str = "image") -> Image.Image:
    """A base64 PNG/JPEG (a `data:image/...;base64,` prefix is allowed) as an RGB PIL image, within the limits."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > limits.max_image_bytes + 3:
        raise RequestError(413, f"{where} is over the limit of {limits.max_image_bytes} bytes: send a smaller image")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is not valid base64: encode the PNG/JPEG file's bytes with base64") from None
    if len(raw) > limits.max_image_bytes:
        raise RequestError(413, f"{where} is {len(raw)} bytes, over the limit of {limits.max_image_bytes}")
    try:
        img = Image.open(io.BytesIO(raw))
        if img.format not in ("PNG", "JPEG"):
            raise RequestError(400, f"{where} is a {img.format} image: send PNG or JPEG")
        if img.width * img.height > limits.max_image_pixels:
            raise RequestError(413, f"{where} is {img.width}x{img.height} pixels, over the limit of "
                                    f"{limits.max_image_pixels}: resize it first")
        img.load()
    except RequestError:
        raise
    except Exception as exc:  # PIL raises many types for bad bytes
        raise RequestError(400, f"{where} is not a readable PNG or JPEG image ({type(exc).__name__})") from None
    return img.convert("RGB")


def encode_image_b64(image) -> str:
    """A PIL image or uint8 HWC array as base64 PNG: what a client sends."""
    import numpy as np

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
