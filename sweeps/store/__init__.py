"""Storage and what lives in it: the filesystem adapter (local, NFS, S3), the ledger that names
every trial and sweep file, leases fenced by conditional writes, checkpoints, the driver's
snapshot and the Parquet results. No Ray, no MLflow."""
