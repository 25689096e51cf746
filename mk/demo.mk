# The integrating targets. See README.md.
#   make demo        the whole pipeline on the built-in samples (tiny model, CPU, no network)
#   make bench       every benchmark, one table (ARGS="--only render,data")
#   make bench-data  shard decoding speed per CPU core
.PHONY: demo bench bench-data

# One intra-op thread per process: the tiny model's ops are too small to gain from threads, and
# the demo runs several processes (Blender workers, data loaders) on few cores.
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTHON) scripts/demo.py $(if $(OUT),--out $(OUT)) $(ARGS)

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
