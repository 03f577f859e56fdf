"""fastpix's benchmark suites (pytest-benchmark), installed as fastpix.bench_suites from bench/suites/.

`fastpix bench` (fastpix/bench.py) runs them and prints the comparison table; nothing else in fastpix imports them
(an import-linter contract in pyproject.toml). Each suite times fastpix beside its eager PyTorch twin on the same
inputs, in one process, and records per case its group, whether it is the group's baseline, and its derived
figures (img/s, % of the device's roof) in extra_info. `layers` holds the layer shapes and input factories the
suites time and the kernel tests check. The suites need the `bench` extra: pip install 'fastpix[bench]'.
"""
