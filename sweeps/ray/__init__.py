"""The Ray side: the Tune engine (searcher, ASHA, callback, resources), the worker that trains
one trial, teacher-logit banks on a node, packing measurements. No MLflow: the driver's events
forward what workers report."""
