"""Report pages: one self-contained HTML file per run, fold group, comparison of runs, or the runs table.

`write_report(paths, out)` picks the page: one run directory -> its page; one fold group -> the group's page;
several -> a comparison. `trash fit` calls `report_after_fit` on every finished run and group (a failure only
warns: the run is kept). Modules: page (HTML building blocks), rundata (what a run directory holds), figures,
thumbs (image | truth | prediction), parts (shared sections), run, group, compare, index.
"""
