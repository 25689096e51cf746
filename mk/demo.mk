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
