# The integrating targets. See README.md.
#   make demo        the whole pipeline on the built-in samples (tiny model, CPU, no network)
#   make bench       every benchmark, one table (ARGS="--only render,data")
#   make bench-data  shard decoding speed per CPU core
#   make pretrain-vae [DATA=renders] [OUT=model folder] [ARGS="--steps 1500"]   the tiny preset's VAE
#                    and image encoder trained on the project's own renders
# DEMO_THREADS=N: intra-op threads per demo process (default: the cores, at most 4).
.PHONY: demo bench bench-data

# Intra-op threads per process: the demo's heavy steps (training, SDS) each run as one busy
# process, so they get the cores (on 2 cores: 11.9 min with 2 threads, 14.5 with one). Capped
# at 4: the tiny model's ops are small. OMP_NUM_THREADS, when set, wins.
DEMO_THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(DEMO_THREADS)} $(PYTHON) scripts/demo.py $(if $(OUT),--out $(OUT)) $(ARGS)

bench: setup
	$(PYTHON) scripts/bench_all.py $(ARGS)

bench-data: setup
	$(PYTHON) scripts/bench_data.py $(ARGS)

# The tiny preset's VAE and image encoder trained on the project's own renders
# (training/pretrain_vae.py): a model folder (trained VAE and encoder, random UNet) for
# `model.init`; prints the VAE's PSNR on held-out views and the encoder's object separation.
#   make pretrain-vae DATA=outputs/render/samples OUT=outputs/models/tiny-vae ARGS="--steps 1500"
.PHONY: pretrain-vae
pretrain-vae: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTHON) -m training.pretrain_vae \
		--data $(or $(DATA),outputs/render/samples) --out $(or $(OUT),outputs/models/tiny-vae) $(ARGS)
