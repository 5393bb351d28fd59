"""sweeps: the Ray Tune driver around kd_core (spec -> plan -> engine -> trial -> results)."""
