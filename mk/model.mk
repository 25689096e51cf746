# Model targets (models/): checkpoint conversion, multi-view sampling, benchmark, tests.
#   make convert-model FORMAT=mvdream|isotropic3d CHECKPOINT=<published file> [OUT=folder]
#   make sample-views IMAGE=<reference image> [MODEL=<model folder>] [OUT=grid.png]
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

# Reference image -> grid of 4 views (default: a random tiny model, to try the pipeline).
sample-views: setup
	@test -n "$(IMAGE)" || { echo "usage: make sample-views IMAGE=IMG [MODEL=DIR] [OUT=GRID.png]"; exit 1; }
	@if [ -z "$(MODEL)" ]; then $(PYTHON) -c "from models.bundle import build_model, save_model; save_model(build_model('tiny'), 'outputs/models/tiny-random')"; fi
	$(PYTHON) -m models.sample --image $(IMAGE) --model $(or $(MODEL),outputs/models/tiny-random) --out $(or $(OUT),outputs/samples/grid.png) $(ARGS)

# Train-step images/s, multi-view vs plain UNet, eager and compiled (tiny on CPU, sd21-base on GPU).
bench-model: setup
	$(PYTHON) scripts/bench_model.py $(ARGS)

test-model: setup
	$(BIN)/pytest -q tests/models $(ARGS)
