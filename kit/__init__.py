"""The offline GPU kit: what a GPU machine without internet needs to run the comparison, built
where there is internet (`kit.build`, `make gpu-kit`), run there with one command (`kit.run`,
`bash gpu-kit/run.sh OUT_DIR [MINUTES]`), the machine and its kernels reported by `kit.environment`."""

KIT_FILE = "kit.json"
