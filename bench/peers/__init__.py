"""Re-implementations of the peers' placement algorithms, for bench/bench_assignment_quality.py."""
