# The two entry points (README): `make demo` and `make test`. Both set everything up in .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORK   ?= work

.PHONY: demo test setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[notebooks,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: the numbered notebooks, in order, headless, on the bundled slides (notebook 01 extracts both); executed copies
# land in $(WORK)/notebooks/, data and figures in $(WORK)/ and readme_images/.
demo: $(STAMP)
	mkdir -p $(WORK)/notebooks
	cd notebooks && for nb in 0*.ipynb; do \
		echo "== $$nb"; \
		MSCOPY_WORK=$(abspath $(WORK)) ../$(BIN)/jupyter nbconvert --to notebook --execute \
			--ExecutePreprocessor.timeout=-1 --output-dir $(abspath $(WORK))/notebooks $$nb || exit 1; \
	done
	$(BIN)/python -m aeutils figures --out readme_images
	@echo "demo done: executed notebooks in $(WORK)/notebooks/; patches of both bundled slides (patches/, patches_prostate/ with --assume-mpp 0.5, QC figures beside their manifests), training run and SR demo in $(WORK)/full/; figures in readme_images/"

# Unit tests, every notebook under nbval (small sizes: CI=true shrinks them), and the bench smoke runs.
test: export CI ?= true
test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --durations=15

clean:
	rm -rf $(VENV) $(WORK) .pytest_cache
