# Rendering targets (data_prep/). See docs/render.md.
#   make render-objaverse [SOURCE=objaverse|samples|<folder>] [COUNT=100] [OUT=...] [RES=256]
#                         [WORKERS=1] [CONFIG=configs/render.yaml] [ARGS="--lvis-categories mug ..."]
#   make render-samples   same, with SOURCE=samples (the built-in set, no network)
#   make shard-summary    [OUT=...]  summary + OUT/contact_sheet.png
#   make merge-manifests  [OUT=...]  merge/validate the partitions' manifests into OUT/manifest.json
#   make bench-render     seconds/view, per-object overhead, objects/hour, pipeline vs plain loop
# COUNT= (empty) renders every object. With CONFIG, only the variables given on the command line
# (or in the environment) override the config file; the Makefile's defaults do not.

RENDER_OUT = $(or $(OUT),outputs/render/$(notdir $(patsubst %/,%,$(1))))
# $(call render_flag,VAR,--flag): pass --flag $(VAR) unless a CONFIG is given and VAR is a default.
render_flag = $(if $($(1)),$(if $(or $(if $(CONFIG),,1),$(filter command line environment%,$(origin $(1)))),$(2) $($(1))))
# $(call RENDER_CMD,source flag,default out)
RENDER_CMD = $(PYTHON) -m data_prep.render $(1) $(if $(OUT),--out $(OUT),$(if $(CONFIG),,--out $(2))) \
	$(call render_flag,COUNT,--count) $(call render_flag,RES,--res) \
	$(call render_flag,WORKERS,--workers) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

.PHONY: render-objaverse render-samples shard-summary merge-manifests bench-render

render-objaverse: setup
	$(call RENDER_CMD,$(call render_flag,SOURCE,--source),$(call RENDER_OUT,$(SOURCE)))

render-samples: setup
	$(call RENDER_CMD,--source samples,$(call RENDER_OUT,samples))

shard-summary: setup
	$(PYTHON) -m data_prep.summary summary $(call RENDER_OUT,$(SOURCE)) $(ARGS)

merge-manifests: setup
	$(PYTHON) -m data_prep.summary merge $(call RENDER_OUT,$(SOURCE)) $(ARGS)

bench-render: setup
	$(PYTHON) scripts/bench_render.py $(ARGS)
