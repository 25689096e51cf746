# A local two-node SLURM cluster (cluster/local.py; docs/cluster.md): for the tests and for trying
# the cluster path on one machine. Installs slurm-wlm + munge with apt-get on first use.
#   make slurm-up      [SLURM_DIR=outputs/slurm-local] start it; then export SLURM_CONF=SLURM_DIR/slurm.conf
#   make slurm-down    cancel its jobs, stop every daemon it started
#   make slurm-status  its nodes and partition
#   make slurm-install slurm-wlm + munge (apt-get) and n1/n2 in /etc/hosts, where missing
#                      (make test runs it: the cluster tests start their own such cluster)
# On any SLURM cluster, finetune, render-objaverse/render-samples and eval submit themselves, with
#   LAUNCHER=slurm|torchrun|local PARTITION= ACCOUNT= QOS= TIME= CONSTRAINT= CPUS_PER_TASK=
#   SBATCH_ARGS="--mem=0 ..." (docs/cluster.md)
SLURM_DIR ?= outputs/slurm-local

# Settings of every submitting target (finetune, render-*, eval): see docs/cluster.md.
LAUNCHER ?=
PARTITION ?=
ACCOUNT ?=
QOS ?=
TIME ?=
CONSTRAINT ?=
CPUS_PER_TASK ?=
SBATCH_ARGS ?=
SLURM_FLAGS = $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(PARTITION),--partition $(PARTITION)) \
	$(if $(ACCOUNT),--account $(ACCOUNT)) $(if $(QOS),--qos $(QOS)) $(if $(TIME),--time $(TIME)) \
	$(if $(CONSTRAINT),--constraint '$(CONSTRAINT)') $(if $(CPUS_PER_TASK),--cpus-per-task $(CPUS_PER_TASK)) \
	$(if $(SBATCH_ARGS),--sbatch-args '$(SBATCH_ARGS)')

.PHONY: slurm-up slurm-down slurm-status slurm-install

slurm-install: setup
	$(PYTHON) -m cluster.local install

slurm-up: setup
	$(PYTHON) -m cluster.local up --root $(SLURM_DIR)

slurm-down: setup
	$(PYTHON) -m cluster.local down --root $(SLURM_DIR)

slurm-status: setup
	$(PYTHON) -m cluster.local status --root $(SLURM_DIR)
