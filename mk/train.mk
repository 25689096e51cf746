# Fine-tuning targets (training/). See docs/training.md.
#   make finetune STAGE=1|2|1+2 NODES=N GPUS=G [CONFIG=...] [DATA=shards] [INIT=weights] [OUT=run] [ARGS="key=value ..."]
#     LAUNCHER=slurm|torchrun|local (default: SLURM when a controller answers)
#     SLURM: PARTITION= ACCOUNT= QOS= TIME= CONSTRAINT= CPUS_PER_TASK= SBATCH_ARGS="--mem=0 ..." AFTER=<job id>
#     (defaults: the config's slurm.* keys); ARGS=--dry-run prints the script, submits nothing
#   make export CKPT=<checkpoint | run folder> OUT=<destination>      -> OUT/fp32, OUT/ema model folders
#               (unet/ vae/ scheduler/ for diffusers, image_encoder/ for open_clip; docs/model.md)
#               [LAYOUT=mvdream|isotropic3d]: also OUT/fp32.pt, OUT/ema.pt in that original layout
#   make cache-latents DATA=<shards> INIT=<model> OUT=<cache folder> [NODES=N GPUS=G on SLURM: a job of
#               N nodes x G ranks, one per GPU; the cache is the same bytes as one process's]
#   make gpu-check / make bench-train [ARGS="--one-step --preset sd21-base --bf16 --grad-checkpointing"]
#   make plan-memory CONFIG=<stage config or preset> NODES=N GPUS=G [ARGS="--gpu-mem 80 --measure"]
#   make smoke-full [ARGS=--no-eval]   the sd21-base model end to end on this CPU (~12 min, <20 GB RAM)
CKPT ?=
LAYOUT ?=
AFTER ?=
TRAIN_FLAGS = --stage $(STAGE) --nodes $(NODES) $(if $(GPUS),--gpus $(GPUS)) $(if $(CONFIG),--config $(CONFIG)) \
	$(if $(DATA),--data $(DATA)) $(if $(INIT),--init $(INIT)) $(if $(OUT),--out $(OUT)) \
	$(SLURM_FLAGS) $(if $(AFTER),--after $(AFTER))

.PHONY: finetune export cache-latents gpu-check bench-train plan-memory smoke-full

finetune: setup
	$(PYTHON) -m training.launch $(TRAIN_FLAGS) $(ARGS)

EXPORT_OUT = $(or $(OUT),outputs/export/$(notdir $(CKPT)))
export: setup
	@test -n "$(CKPT)" || { echo "error: nothing to export: pass CKPT=<training checkpoint or run folder> (usage: make export CKPT=... OUT=<destination> [LAYOUT=mvdream|isotropic3d])" >&2; exit 2; }
	@case "$(LAYOUT)" in ""|diffusers|mvdream|isotropic3d) ;; *) echo "error: LAYOUT=$(LAYOUT): use mvdream or isotropic3d (the default is the diffusers/open_clip folders)"; exit 2;; esac
	$(PYTHON) -m training.export $(CKPT) --out $(EXPORT_OUT)
	$(if $(filter mvdream isotropic3d,$(LAYOUT)),for kind in fp32 ema; do if [ -d $(EXPORT_OUT)/$$kind ]; then \
		$(PYTHON) -m models.convert --format $(LAYOUT) --export $(EXPORT_OUT)/$$kind --out $(EXPORT_OUT)/$$kind.pt || exit 1; fi; done)

cache-latents: setup
	@test -n "$(DATA)" || { echo "error: no shards: pass DATA=<rendered shards> (usage: make cache-latents DATA=<shards> INIT=<model> OUT=<folder>)" >&2; exit 2; }
	$(PYTHON) -m training.cache_slurm $(SLURM_FLAGS) --nodes $(NODES) $(if $(GPUS),--gpus $(GPUS)) \
		--data $(DATA) $(if $(INIT),--init $(INIT)) --out $(or $(OUT),outputs/latent-cache) $(ARGS)

gpu-check: setup
	$(PYTHON) scripts/gpu_check.py $(ARGS)

bench-train: setup
	$(PYTHON) scripts/bench_train.py $(ARGS)

# Bytes per GPU of weights, gradients, optimizer state, EMA, activations; largest batch per GPU.
plan-memory: setup
	$(PYTHON) scripts/plan_memory.py --config $(or $(CONFIG),sd21-base) --stage $(STAGE) \
		--nodes $(NODES) --gpus $(or $(GPUS),1) $(ARGS)

# The full-size model through stage 1, stage 2, export, sampling, SDS and scoring on the CPU.
smoke-full: setup
	$(PYTHON) scripts/smoke_full.py $(ARGS)
