"""Runs one benchmark (see the module's docstring); `alignlab bench` runs them all and writes BENCHMARKS.md."""

from alignlab.bench.influence import main

if __name__ == "__main__":
    main()
