# The two commands a new user needs (each installs what is missing first):
#   make demo   build and start the demo (proxy :8080, admin :9090, echo upstream)
#   make test   the whole test suite, exactly what CI runs (.ci/run)
#   make fuzz   every fuzz target for 30 s (.ci/fuzz; README "Fuzzing")
# On a machine that already has the build libraries, plain cargo works too:
#   cargo run --release -- demo   /   cargo test

.PHONY: demo test deps fuzz

# libxmlsec1, libxml2 and libclang (SAML signatures); root or sudo.
deps:
	bash scripts/install-build-deps.sh

demo: deps
	cargo run --release -- demo

test:
	bash .ci/run

fuzz:
	bash .ci/fuzz
