# A local two-node SLURM cluster (cluster/local.py; docs/cluster.md): for the tests and for trying
# the cluster path on one machine. Installs slurm-wlm + munge with apt-get on first use.
#   make slurm-up [SLURM_DIR=outputs/slurm-local]   start it; then `export SLURM_CONF=$(SLURM_DIR)/slurm.conf`
#   make slurm-down    cancel its jobs, stop every daemon it started
#   make slurm-status  its nodes and partition
SLURM_DIR ?= outputs/slurm-local

.PHONY: slurm-up slurm-down slurm-status

slurm-up: setup
	$(PYTHON) -m cluster.local up --root $(SLURM_DIR)

slurm-down: setup
	$(PYTHON) -m cluster.local down --root $(SLURM_DIR)

slurm-status: setup
	$(PYTHON) -m cluster.local status --root $(SLURM_DIR)
