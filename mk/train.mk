# Fine-tuning targets (training/). See docs/training.md.
#   make finetune STAGE=1|2 NODES=N GPUS=G [CONFIG=...] [DATA=shards] [INIT=weights] [OUT=run] [ARGS="key=value ..."]
#   make export CKPT=<checkpoint | run folder> OUT=<destination>      -> OUT/fp32, OUT/ema model folders
#   make cache-latents DATA=<shards> INIT=<model> OUT=<cache folder>
#   make gpu-check / make bench-train
CKPT ?=
TRAIN_FLAGS = --stage $(STAGE) --nodes $(NODES) $(if $(GPUS),--gpus $(GPUS)) $(if $(CONFIG),--config $(CONFIG)) \
	$(if $(DATA),--data $(DATA)) $(if $(INIT),--init $(INIT)) $(if $(OUT),--out $(OUT))

.PHONY: finetune export cache-latents gpu-check bench-train

finetune: setup
	$(PYTHON) -m training.launch $(TRAIN_FLAGS) $(ARGS)

export: setup
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<checkpoint or run folder> OUT=<destination>"; exit 2; }
	$(PYTHON) -m training.checkpoints $(CKPT) --out $(or $(OUT),outputs/export/$(notdir $(CKPT)))

cache-latents: setup
	@test -n "$(DATA)" || { echo "usage: make cache-latents DATA=<shards> INIT=<model> OUT=<folder>"; exit 2; }
	$(PYTHON) -m training.latent_cache --data $(DATA) $(if $(INIT),--init $(INIT)) --out $(or $(OUT),outputs/latent-cache) $(ARGS)

gpu-check: setup
	$(PYTHON) scripts/gpu_check.py $(ARGS)

bench-train: setup
	$(PYTHON) scripts/bench_train.py $(ARGS)
