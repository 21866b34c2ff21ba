# Every target sets up the project-local virtual environment first (scripts/setup_env.sh; a no-op when current).
PY := .venv/bin/python
PYTEST := $(PY) -m pytest
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_DEDUP_LOGS := 1

.PHONY: setup test test-all test-slow test-gpu chaos-test cluster-test plan-check demo demo-control demo-long demo-from-scratch bench-data clean

setup:
	bash scripts/setup_env.sh

## unit + ray tiers: what CI runs
test: setup
	$(PYTEST) -m "not slow and not gpu" -q

## everything, including the slow end-to-end tier and GPU tests (skipped without CUDA)
test-all: setup
	$(PYTEST) -q

test-slow: setup
	$(PYTEST) -m slow -q

test-gpu: setup
	$(PYTEST) -m gpu -q

## the chaos tier: killed / hung actors, a SIGKILLed GRPO driver resumed until done, a killed reward-training worker
## (about 8 min)
chaos-test: setup
	$(PYTEST) tests/test_chaos.py tests/test_train_reward.py -m slow -q

## two real Ray nodes on this machine: token auth, jobs submitted, the sampler on the second node, metrics scraped
cluster-test: setup
	$(PYTEST) tests/test_cluster.py -m slow -q

## the capacity planner's simulation against the real GRPO loop on this machine (and the planner's unit tests)
plan-check: setup
	$(PYTEST) tests/test_plan.py -q -s

## the main job on its embedded default, into runs/demo/
demo: setup
	$(PY) -m jobs.demo --out runs/demo

## the demo plus its RL control (GRPO with the verifier as the reward), into runs/demo/control/
demo-control: setup
	$(PY) -m jobs.demo --out runs/demo --control

## the demo with 100 GRPO steps instead of 15 (about 22 min on 2 cores), into runs/demo-long/: the held-out curve
## every 20 steps, past the point where the wrong sides start to move (bench/RESULTS.md, "Longer GRPO")
demo-long: setup
	$(PY) -m jobs.demo --out runs/demo-long --set grpo.steps=100 --set grpo.eval_every=20

## the same, but also reruns the two pretraining jobs instead of using assets/tiny-pretrained/
demo-from-scratch: setup
	$(PY) -m jobs.demo --out runs/demo-from-scratch --from-scratch

bench-data: setup
	$(PY) -m bench.data_pipeline --pairs 2000

clean:
	rm -rf runs .pytest_cache
