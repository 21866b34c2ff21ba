"""SpatialScoreService: `spatialrl.reward.scorer.SpatialScorer` as a Ray Serve deployment. The one place that adds Serve.

HTTP (JSON only; the contract and every validation rule: spatialrl/reward/api.py):
    POST /v1/score {"items": [{"prompt", "image": base64 PNG/JPEG}]} -> {"scores": [...], "model": {...}}
    GET  /healthz  -> 200 once the model is loaded (a replica answers only after its constructor ran)
In-cluster callers skip HTTP with a DeploymentHandle: `handle.score.remote(prompts, images)` (images: uint8 HWC
arrays or PIL images) returns the same floats.

Both paths go through one `@serve.batch` method, so concurrent requests are scored together in one
`SpatialScorer.score` call (max batch size = requests per batch, from the config). Scores are exactly the
scorer's: the scorer pads left and scores in chunks, and a row's score does not depend on its chunk.

Metrics go to the Ray dashboard / Prometheus with the project's `spatialrl_` prefix (spatialrl.metrics):
`spatialrl_serve_requests` (counter, tag `status`), `spatialrl_serve_items`, `spatialrl_serve_batch_size`
(histogram, requests per batch), `spatialrl_serve_latency_ms` (histogram, whole request).
"""

from __future__ import annotations

import json
import time

from ray import serve

from spatialrl.reward.api import (
    HEALTH_ROUTE, RequestError, ServeRewardConfig, check_auth, check_length, check_route, parse_score_request,
)


def _json_response(status: int, payload: dict):
    from starlette.responses import Response

    return Response(json.dumps(payload), status_code=status, media_type="application/json")


class SpatialScoreService:
    """One replica: loads SpatialScore once and answers HTTP requests and handle calls."""

    def __init__(self, cfg: ServeRewardConfig, token_digest: str | None = None):
        from spatialrl.metrics import service_metrics
        from spatialrl.reward.scorer import SpatialScorer

        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.token_digest = token_digest
        self.scorer = SpatialScorer.from_checkpoint(self.cfg.checkpoint, device=self.cfg.device,
                                                    batch_size=self.cfg.scorer_batch_size)
        self.model_info = {"checkpoint": self.cfg.checkpoint, "backbone": str(self.scorer.model.cfg.backbone)}
        self.metrics = service_metrics()
        self._score_batch.set_max_batch_size(self.cfg.batching.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.cfg.batching.batch_wait_timeout_s)

    def check_health(self) -> None:
        """Serve's health check: the model must be loaded and answer."""
        if self.scorer is None:
            raise RuntimeError("SpatialScore is not loaded")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # replaced from the config in __init__
    async def _score_batch(self, requests: list[tuple[list[str], list]]) -> list[list[float]]:
        prompts = [p for ps, _ in requests for p in ps]
        images = [img for _, imgs in requests for img in imgs]
        self.metrics["batch_size"].observe(len(requests))
        scores = self.scorer.score(prompts, images).tolist()
        out, start = [], 0
        for ps, _ in requests:
            out.append(scores[start:start + len(ps)])
            start += len(ps)
        return out

    async def score(self, prompts: list[str], images: list) -> list[float]:
        """Handle path: scores for (prompt, image) items, the same floats as over HTTP."""
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts and {len(images)} images; pass one image per prompt")
        if not prompts:
            return []
        self.metrics["items"].inc(len(prompts))
        return await self._score_batch((list(prompts), list(images)))

    async def __call__(self, request):
        t0 = time.perf_counter()
        status, payload = 200, {}
        try:
            route = check_route(request.url.path, request.method)
            check_auth(request.headers.get("authorization"), self.token_digest)
            if route == HEALTH_ROUTE:
                payload = {"status": "ok", "model": self.model_info}
            else:
                limits = self.cfg.limits
                check_length(request.headers.get("content-length"), limits)
                body = await request.body()
                prompts, images = parse_score_request(body, request.headers.get("content-type"), limits)
                self.metrics["items"].inc(len(prompts))
                payload = {"scores": await self._score_batch((prompts, images)), "model": self.model_info}
        except RequestError as exc:
            status, payload = exc.status, {"error": exc.message}
        except Exception as exc:  # a server fault: a 500 with its type, the details in the replica's log
            status, payload = 500, {"error": f"internal error ({type(exc).__name__}); see the replica's log"}
            import logging

            logging.getLogger("ray.serve").exception("scoring failed")
        self.metrics["requests"].inc(1, tags={"status": str(status)})
        self.metrics["latency_ms"].observe((time.perf_counter() - t0) * 1000)
        return _json_response(status, payload)


def build_app(cfg: ServeRewardConfig, token_digest: str | None = None):
    """The bound Serve application for `cfg`: replicas, autoscaling and resources from its sections."""
    r = cfg.replicas
    autoscaling = None
    if r.max_replicas > r.min_replicas:
        autoscaling = {"min_replicas": r.min_replicas, "max_replicas": r.max_replicas,
                       "initial_replicas": r.initial_replicas or r.min_replicas,
                       "target_ongoing_requests": r.target_ongoing_requests}
    options = dict(
        name="SpatialScore",
        ray_actor_options={"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
        max_ongoing_requests=r.max_ongoing_requests,
        health_check_period_s=5, health_check_timeout_s=30,
    )
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = r.min_replicas
    return serve.deployment(SpatialScoreService).options(**options).bind(cfg, token_digest)
