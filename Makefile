# natfast: the two commands of the README.
#   make demo   set up, then a tiny NAT search on the embedded CIFAR-10 sample and the DARTS transform
#   make test   set up, then the whole test suite (CPU; Triton kernels through TRITON_INTERPRET=1)
PYTHON ?= python3
DEMO_DIR ?= runs/demo

.PHONY: setup demo test

setup:
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-build-isolation -e .

demo: setup
	$(PYTHON) -m natfast search --preset tiny --out $(DEMO_DIR) --overwrite
	$(PYTHON) -m natfast transform --arch DARTS --checkpoint $(DEMO_DIR)/checkpoint.pt --draw $(DEMO_DIR)/darts_vs_nat.png

test: setup
	$(PYTHON) -m pytest -q
