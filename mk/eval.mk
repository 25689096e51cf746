# Evaluation targets (evaluation/). See docs/evaluation.md.
#   make eval IMAGES=<folder of images, or of held-out shards> MODEL=<model folder> [OUT=outputs/eval]
#             [STEPS=10000] [CONFIG=<YAML on top of configs/eval.yaml>] [GPUS=all|0,1|none]
#             [ARGS="key.sub=value ... --rank R --world-size W --rescore --recompute"]
#   A rerun skips objects done with the same model, config and scorer and refuses (naming what
#   changed) when they differ: --rescore redoes exports/scores of kept fields, --recompute starts
#   those objects again. Failed objects are listed in the report; the exit code is then non-zero.
#   make eval-report [OUT=...]   rebuild results.{json,csv,md}, plots, contact sheet and index.html
#                                (ARGS="--clip-unit raw")
#   make bench-sds               SDS it/s at 64 and 256 px, time split (sd21-base on GPU, tiny on CPU)
#   make test-eval               the evaluation tests
# On a SLURM cluster (a controller answers; LAUNCHER=local runs here) it submits one job of NODES
# nodes, each using all of its GPUs, that ends with the one report (evaluation/eval_slurm.py;
# PARTITION=, TIME=, ... as for finetune; ARGS=--dry-run prints the script).
# MODEL is required; a pipeline check on a random-init tiny model: ARGS=model.size=tiny (scores
# are then meaningless).
EVAL_OUT = $(or $(OUT),outputs/eval)

.PHONY: eval eval-report bench-sds test-eval

eval: setup
	@test -n "$(IMAGES)$(findstring --print-config,$(ARGS))" || { echo "error: no images: pass IMAGES=<folder of images, or of held-out shards> (usage: make eval IMAGES=DIR MODEL=DIR [OUT=DIR] [STEPS=N] [CONFIG=YAML] [GPUS=all] [ARGS=...])" >&2; exit 2; }
	$(PYTHON) -m evaluation.eval_slurm $(SLURM_FLAGS) --nodes $(NODES) $(if $(IMAGES),--images $(IMAGES)) --out $(EVAL_OUT) $(if $(MODEL),--model $(MODEL)) \
		$(if $(STEPS),--steps $(STEPS)) $(if $(CONFIG),--config $(CONFIG)) $(if $(GPUS),--gpus $(GPUS)) $(ARGS)

eval-report: setup
	$(PYTHON) -m evaluation.report --out $(EVAL_OUT) $(ARGS)

bench-sds: setup
	$(PYTHON) scripts/bench_sds.py $(ARGS)

test-eval: setup
	$(BIN)/pytest -q tests/evaluation $(ARGS)
