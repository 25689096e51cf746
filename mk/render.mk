# Rendering targets (data_prep/). See docs/render.md.
#   make render-objaverse [SOURCE=objaverse|samples|<folder>] [COUNT=100] [OUT=...] [RES=256]
#                         [WORKERS=1] [CONFIG=configs/render.yaml] [ARGS="--lvis-categories mug ..."]
#   make render-samples   same, with SOURCE=samples (the built-in set, no network)
#   make shard-summary    [OUT=...]  summary + OUT/contact_sheet.png
#   make merge-manifests  [OUT=...]  merge/validate the partitions' manifests into OUT/manifest.json
#   make bench-render     seconds/view, per-object overhead, objects/hour, pipeline vs plain loop
#   make bench-download   one slow file among many: sliding download window vs chunked fetching
#   make bench-manifest   10M-object records-only run: start-up, streaming merge, peak memory
#   make draco-library    build outputs/draco/libextern_draco.so (Draco-compressed glTF), then
#                         ARGS="--draco-library outputs/draco/libextern_draco.so"
# COUNT= (empty) renders every object. With CONFIG, only the variables given on the command line
# (or in the environment) override the config file; the Makefile's defaults do not.
# On a SLURM cluster (a controller answers; LAUNCHER=local renders here) these two targets submit
# an array of TASKS tasks (one partition each; default: the folder's layout, else 8) and a merge +
# summary job after it (data_prep/render_slurm.py; PARTITION=, TIME=, ... as for finetune;
# ARGS=--dry-run prints the scripts).
# Inside a SLURM array task (SLURM_ARRAY_TASK_ID set) or with NO_SETUP=1 these targets never run
# pip: 64 tasks installing into one shared .venv at once would corrupt it. Run `make setup` once
# before `sbatch`; a task then only checks that the environment is there.
RENDER_SETUP = $(if $(or $(NO_SETUP),$(SLURM_ARRAY_TASK_ID)),render-check-setup,setup)

RENDER_OUT = $(or $(OUT),outputs/render/$(notdir $(patsubst %/,%,$(1))))
# $(call render_flag,VAR,--flag): pass --flag $(VAR) unless a CONFIG is given and VAR is a default.
render_flag = $(if $($(1)),$(if $(or $(if $(CONFIG),,1),$(filter command line environment%,$(origin $(1)))),$(2) $($(1))))
# $(call RENDER_CMD,source flag,default out)
RENDER_CMD = $(PYTHON) -m data_prep.render_slurm $(SLURM_FLAGS) $(if $(TASKS),--tasks $(TASKS)) $(1) $(if $(OUT),--out $(OUT),$(if $(CONFIG),,--out $(2))) \
	$(call render_flag,COUNT,--count) $(call render_flag,RES,--res) \
	$(call render_flag,WORKERS,--workers) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

.PHONY: render-objaverse render-samples shard-summary merge-manifests bench-render render-check-setup

render-check-setup:
	@test -x $(PYTHON) -a -f $(STAMP) || { echo "error: $(PYTHON) is not installed; run 'make setup' once (on the login node) before the array starts"; exit 1; }

render-objaverse: $(RENDER_SETUP)
	$(call RENDER_CMD,$(call render_flag,SOURCE,--source),$(call RENDER_OUT,$(SOURCE)))

render-samples: $(RENDER_SETUP)
	$(call RENDER_CMD,--source samples,$(call RENDER_OUT,samples))

shard-summary: $(RENDER_SETUP)
	$(PYTHON) -m data_prep.summary summary $(call RENDER_OUT,$(SOURCE)) $(ARGS)

merge-manifests: $(RENDER_SETUP)
	$(PYTHON) -m data_prep.summary merge $(call RENDER_OUT,$(SOURCE)) $(ARGS)

bench-render: setup
	$(PYTHON) scripts/bench_render.py $(ARGS)

# One slow file among many from a local fake hub: the sliding download window against the chunked
# pool.map it replaced (s until the first / every fast file is ready). ARGS="--slow-s 10".
.PHONY: bench-download
bench-download: setup
	$(PYTHON) scripts/bench_download.py $(ARGS)

# A records-only render run (no Blender): records written, one partition's start-up, the
# streaming merge, peak memory. ARGS="--objects 10000000 --partitions 64" (the defaults).
.PHONY: bench-manifest
bench-manifest: setup
	$(PYTHON) scripts/bench_manifest.py $(ARGS)

# Draco-compressed glTF needs a decoder library the bpy wheel lacks: ours (data_prep/draco/) is
# built on Debian's libdraco; draco_encoder makes the test's Draco files. Installed on first use.
.PHONY: draco-deps draco-library
draco-deps:
	@{ command -v g++ >/dev/null && command -v draco_encoder >/dev/null && \
		test -f /usr/include/draco/compression/decode.h; } || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing g++, libdraco-dev and draco (apt-get) for Draco-compressed glTF"; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq g++ libdraco-dev draco; }

draco-library: setup draco-deps
	$(PYTHON) -m data_prep.draco_library $(if $(OUT),--out $(OUT))
