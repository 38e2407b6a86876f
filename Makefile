# One entry point for setup, demo, tests, lint and benchmarks. Every target sets itself up first,
# so `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PED2 ?= ../shared/data/ucsd_ped2
PED2_RULES := distance/topk+motion,distance/topk+motion:max,distance/topk,motion,knnn/majority,knnn/topk,knnn/global,hdbscan/global

.PHONY: setup demo test test-fast lint bench-scoring bench-throughput bench-openvino bench-gpu ped2 ped2-live ped2-openvino ped2-compare clean

$(STAMP): pyproject.toml tools/setup.sh
	bash tools/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamvad demo --out demo-out

# Three test processes, each (and every process a test starts) on one thread of torch, OpenMP and OpenBLAS: with
# their default of a thread per core, the processes' thread pools spin against each other for the same cores. Three
# on two cores, since many tests wait on real processes, sockets and clocks (two kept the CPU 131% of 200% busy).
TEST_ENV := OMP_NUM_THREADS=1

test: $(STAMP)
	bash tools/setup.sh --system
	$(TEST_ENV) $(PY) -m pytest -q -n 3 --dist worksteal

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 3 -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check streamvad tests tools

bench-scoring: $(STAMP)
	$(VENV)/bin/streamvad bench scoring --json bench-out/scoring.json

bench-throughput: $(STAMP)
	$(VENV)/bin/streamvad bench throughput --json bench-out/throughput.json

# the backbone on torch, OpenVINO FP32 and OpenVINO INT8, end to end through the worker, in one run each
bench-openvino: $(STAMP)
	$(VENV)/bin/streamvad bench throughput --models efficientnet-lite0-ms --image-size 240 352 \
		--runtimes torch openvino openvino-int8 --cameras 4 --seconds 20 --capacity-readers 4 \
		--json bench-out/openvino-lite0.json
	$(VENV)/bin/streamvad bench throughput --models vit-s --runtimes torch openvino openvino-int8 --cameras 2 \
		--seconds 20 --capacity-readers 4 --json bench-out/openvino-vits.json

# on a CUDA host: ViT-L-sized DINOv2 in bf16, all-patch scoring on the GPU, ~2,400 training frames
bench-gpu: $(STAMP)
	$(VENV)/bin/streamvad bench throughput --models vit-l --device cuda --dtype bfloat16 --max-batch 64 \
		--capacity-readers 8 --train-seconds 600 --cameras 50 100 200 250 --seconds 30 \
		--json bench-out/throughput-gpu.json

# UCSD Ped2 through the product's own fit + eval path (see README, Benchmarks)
# The served model keeps its memory within normality.memory_budget_mb (48 MiB); the full memory beside it
ped2: $(STAMP)
	$(VENV)/bin/streamvad fit --dataset ucsd --root $(PED2) --config configs/ped2.yaml --out runs/ped2/model
	$(VENV)/bin/streamvad eval --model runs/ped2/model --dataset ucsd --root $(PED2) --out runs/ped2/report \
		--rules $(PED2_RULES)
	$(VENV)/bin/streamvad fit --dataset ucsd --root $(PED2) --config configs/ped2.yaml --memory-budget-mb 0 \
		--out runs/ped2/model-full
	$(VENV)/bin/streamvad eval --model runs/ped2/model-full --dataset ucsd --root $(PED2) \
		--out runs/ped2/report-full --rules distance/topk+motion,distance/topk+motion:max,distance/topk,motion

# the same at the live sampling rate: serve samples 4 fps, Ped2 is recorded at 10; every other frame is 5 fps
ped2-live: $(STAMP)
	$(VENV)/bin/streamvad fit --dataset ucsd --root $(PED2) --config configs/ped2.yaml --sample-fps 5 \
		--out runs/ped2-5fps/model
	$(VENV)/bin/streamvad eval --model runs/ped2-5fps/model --dataset ucsd --root $(PED2) --sample-fps 5 \
		--out runs/ped2-5fps/report --rules distance/topk+motion,distance/topk+motion:max,distance/topk,motion

# Ped2 on OpenVINO FP32 and INT8 (the same fit and eval as `make ped2`'s served model, another runtime)
ped2-openvino: $(STAMP)
	for v in openvino int8; do \
		$(VENV)/bin/streamvad fit --dataset ucsd --root $(PED2) --config configs/ped2-$$v.yaml --out runs/ped2-$$v/model && \
		$(VENV)/bin/streamvad eval --model runs/ped2-$$v/model --dataset ucsd --root $(PED2) --out runs/ped2-$$v/report \
			--rules distance/topk+motion,distance/topk+motion:max,distance/topk,motion || exit 1; \
	done

# every scorer and detector on one cached embedding pass, plus pixel AUROC on cut-paste anomalies
ped2-compare: $(STAMP)
	$(PY) tools/ped2_benchmark.py --root $(PED2) --out runs/ped2-compare --cache runs/ped2-cache

clean:
	rm -rf $(VENV) demo-out bench-out runs .pytest_cache .ruff_cache
