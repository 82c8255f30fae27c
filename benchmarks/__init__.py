"""Speed measurements (results in BENCHMARKS.md). Run them from the root of a clone, with the project
installed, as modules: `python -m benchmarks.bench_ledger`. Being a package, like tests/, they import the
project as `welfare_offsets.*`, each other as `benchmarks.*`, and the tests' synthetic subject as
`tests.synthetic_subject`, with no sys.path edits."""
