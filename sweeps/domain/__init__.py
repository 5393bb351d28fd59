"""The pure domain: the spec, the plan, the result record and trial states, the scheduler and
its priorities. No Ray, MLflow, Arrow, pandas or torch: every rule here is stepped by hand in
its tests."""
