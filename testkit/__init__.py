"""What the tests and the benchmarks share: the real components they start on 127.0.0.1 and
stop again (drivers.py: `kdsweep run` as a process, a multi-node Ray on loopback, free ports;
servers.py: PostgreSQL, MLflow servers). Not part of kdsweep itself."""
