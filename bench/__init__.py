"""labrelay benchmarks: figures recorded in docs/, never timed assertions in the test suite."""
