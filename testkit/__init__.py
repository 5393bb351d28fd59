"""What the tests and the benchmarks share: the real components they start on 127.0.0.1 and
stop again (drivers.py: `kdsweep run` as a process, a multi-node Ray on loopback, free ports;
servers.py: PostgreSQL, MLflow servers). Not part of kdsweep itself."""

# A guard against a hang, never a guess at speed: a wait for what takes 20-60 s on a quiet
# 2-core machine (a driver's start-up and a few epochs, a server's start) is given ten times
# that; one that runs out is a hang, not a busy machine (issue 46). Waits for less use a share.
HANG = 600
