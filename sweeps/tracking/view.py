"""The experiment's saved view in the MLflow UI: the trials' rows, their learning curves first in
the chart view, and a parallel-coordinates chart of the sweep's axes against test accuracy.

MLflow's UI has no API for a default chart layout: a user's layout lives in the browser, and a
"shared view" is an experiment tag (`mlflow.sharedViewState.<key>`) holding the view's state as
JSON, opened by a link with `viewStateShareKey=<key>`. That tag and its fields (the UI's own
names, read by MLflow 3.17's `useSharedExperimentViewState`, which takes plain JSON) are the
UI's private format: VIEW_FIELDS pins the ones written here, and tests/test_private_apis.py
fails when the UI bundle stops reading them. Without the view the links still open the runs
table; only the layout is lost.
"""

from __future__ import annotations

import json

from .names import UI_MODE

SHARE_TAG = "mlflow.sharedViewState."
KEY = "kdsweep"  # the share key: one saved view per experiment, rewritten by each driver
# the curves a reader opens the chart view for, in this order; the rest follow
CURVES = ["test_acc", "val_acc", "train_acc", "test_loss", "train_loss", "logit_distance"]
# the sweep's axes (params; inv_tau is a metric: 1/tau, 0 for tau = inf, so MSE has an axis too)
AXES = ["setting", "alpha", "noise_rate", "model"]
AXIS_METRICS = ["inv_tau", "test_acc"]
# the runs table's visible columns, in this order: the results, then the sweep's axes (the UI's
# column keys,
# `<type>.\`<name>\``), so the view compares trials without opening "Show more columns"
COLUMNS = [("metrics", "test_acc"), ("metrics", "val_acc"), ("params", "setting"),
           ("params", "tau"), ("params", "alpha"), ("params", "noise_rate"), ("params", "seed"),
           ("params", "model"), ("params", "generation"), ("params", "student")]
VIEW_FIELDS = ("compareRunCharts", "compareRunSections", "isAccordionReordered",
               "runsHiddenMode", "hideEmptyCharts", "searchFilter", "orderByKey", "orderByAsc",
               "selectedColumns", "columnOrder")


def column_key(kind: str, name: str) -> str:
    """The UI's key of a runs-table column (its makeCanonicalSortKey)."""
    return f"{kind}.`{name}`"


def _line(uuid: str, section: str, metric: str) -> dict:
    return {"uuid": uuid, "type": "LINE", "runsCountToCompare": 10, "metricSectionId": section,
            "deleted": False, "isGenerated": True, "metricKey": metric, "displayName": metric,
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
            "useGlobalLineSmoothing": True}


def view_state() -> dict:
    """The saved view: trial runs only, best test accuracy first, COLUMNS visible; sections
    "Model metrics" (the curves, CURVES first), "sweep axes" (parallel coordinates), then
    "analysis" (final models)."""
    curves, axes, analysis = "kdsweep-curves", "kdsweep-axes", "kdsweep-analysis"
    charts = [_line(f"kdsweep-{m}", curves, m) for m in CURVES]
    charts.append({"uuid": "kdsweep-parallel", "type": "PARALLEL", "runsCountToCompare": 100,
                   "metricSectionId": axes, "deleted": False, "isGenerated": False,
                   "displayName": "sweep axes against test accuracy",
                   "selectedParams": AXES, "selectedMetrics": AXIS_METRICS,
                   "showAllRuns": True})
    sections = [{"uuid": uuid, "name": name, "display": True, "isReordered": True,
                 "deleted": False, "isGenerated": True}
                for uuid, name in ((curves, "Model metrics"), (axes, "sweep axes"),
                                   (analysis, "analysis"))]
    return {"searchFilter": "tags.`kdsweep.role` = 'trial'",
            "orderByKey": column_key("metrics", "test_acc"), "orderByAsc": False,
            "selectedColumns": [column_key(k, n) for k, n in COLUMNS],
            "columnOrder": [column_key(k, n) for k, n in COLUMNS],
            "compareRunCharts": charts, "compareRunSections": sections,
            "isAccordionReordered": True, "runsHiddenMode": "SHOW_ALL",
            "hideEmptyCharts": True}


def saved_view() -> dict[str, str]:
    """The experiment tag that holds the view."""
    return {SHARE_TAG + KEY: json.dumps(view_state())}


def view_query(charts: bool = False) -> str:
    """The URL query that opens the saved view, in the Model training mode."""
    return f"{UI_MODE}&viewStateShareKey={KEY}" + ("&compareRunsMode=CHART" if charts else "")
