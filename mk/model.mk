# Model targets (models/): checkpoint conversion, multi-view sampling, benchmark, tests.
#   make convert-model FORMAT=mvdream|isotropic3d CHECKPOINT=<published file> [OUT=folder]
#   make sample-views IMAGE=<reference image> MODEL=<model folder | diffusers folder | hf:org/name> [OUT=grid.png]
#     (MODEL=random:tiny: a random-init tiny model, a pipeline check)
#   make bench-model   train-step images/s, multi-view vs plain UNet, eager and compiled
#   make test-model    the model tests
# ARGS=<extra CLI options> for every target.
FORMAT ?= mvdream
CHECKPOINT ?=
IMAGE ?=

.PHONY: convert-model sample-views bench-model test-model

# Published checkpoint -> our model format, once and for all.
convert-model: setup
	@test -n "$(CHECKPOINT)" || { echo "usage: make convert-model FORMAT=mvdream|isotropic3d CHECKPOINT=FILE OUT=DIR"; exit 1; }
	$(PYTHON) -m models.convert --format $(FORMAT) --checkpoint $(CHECKPOINT) --out $(or $(OUT),outputs/models/$(FORMAT)) $(ARGS)

# Reference image -> grid of 4 views. MODEL is required: sampling a random model by default hid a
# forgotten MODEL behind a grid of noise (MODEL=random:tiny asks for one).
sample-views: setup
	@test -n "$(IMAGE)" || { echo "error: no reference image: pass IMAGE=<image file> (usage: make sample-views IMAGE=IMG MODEL=DIR [OUT=GRID.png])" >&2; exit 2; }
	@test -n "$(MODEL)" || { echo "error: no model: pass MODEL=<model folder> (make export / make convert-model), or MODEL=random:tiny for a pipeline check on a random model" >&2; exit 2; }
	$(PYTHON) -m models.sample --image $(IMAGE) --model $(MODEL) --out $(or $(OUT),outputs/samples/grid.png) $(ARGS)

# Train-step images/s, multi-view vs plain UNet, eager and compiled (tiny on CPU, sd21-base on GPU).
bench-model: setup
	$(PYTHON) scripts/bench_model.py $(ARGS)

test-model: setup
	$(BIN)/pytest -q tests/models $(ARGS)
