"""Builds the four Grafana dashboards (grafana/dashboards/tender-*.json) with Grafana's
Foundation SDK (PyPI `grafana-foundation-sdk`, the `dashboards` extra).

    make dashboards                      # writes grafana/dashboards/*.json
    python grafana/build.py --out DIR    # writes them somewhere else

The JSON files are generated: edit the tables below, not the files. The output is byte-stable
(sorted keys, indent 2, a trailing newline), and tests/unit/test_dashboards_generated.py fails
when the committed files differ from what this module writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

OUT = Path(__file__).resolve().parent / "dashboards"

# Every panel and query reads the data source the `datasource` variable picks.
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
LIVE = 'state=~"runnable|running|sleeping|frozen"'  # the live process states

# Time-series styles: (draw style, fill opacity, stacking).
Style = tuple[common.GraphDrawStyle, int, common.StackingMode]
LINE: Style = (common.GraphDrawStyle.LINE, 10, common.StackingMode.NONE)
STACKED: Style = (common.GraphDrawStyle.LINE, 30, common.StackingMode.NORMAL)
BARS: Style = (common.GraphDrawStyle.BARS, 30, common.StackingMode.NONE)
STACKED_BARS: Style = (common.GraphDrawStyle.BARS, 30, common.StackingMode.NORMAL)

Query = tuple[str, str]  # (PromQL expression, legend format)
AnyPanel = stat.Panel | timeseries.Panel | bargauge.Panel | statetimeline.Panel


# --- panels ---------------------------------------------------------------------------------------

def query(ref_id: str, expr: str, legend: str, instant: bool = False) -> prometheus.Dataquery:
    q = (prometheus.Dataquery().ref_id(ref_id).datasource(DATASOURCE).expr(expr)
         .legend_format(legend).editor_mode(pm.QueryEditorMode.CODE))
    return q.instant() if instant else q.range()


def reduce_last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def color(mode: dm.FieldColorModeId) -> db.FieldColor:
    return db.FieldColor().mode(mode)


def stat_panel(title: str, expr: str, unit: str = "short", decimals: int | None = None,
               legend: str = "__auto",
               text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
               description: str = "") -> stat.Panel:
    """A single number, 6 wide and 4 high: the first row of a dashboard."""
    p = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
         .span(6).height(4).unit(unit)
         .color_scheme(color(dm.FieldColorModeId.THRESHOLDS))
         .thresholds(thresholds((None, "green")))
         .reduce_options(reduce_last()).color_mode(common.BigValueColorMode.VALUE)
         .graph_mode(common.BigValueGraphMode.AREA).justify_mode(common.BigValueJustifyMode.AUTO)
         .text_mode(text_mode).orientation(common.VizOrientation.AUTO)
         .with_target(query("A", expr, legend)))
    return p.decimals(decimals) if decimals is not None else p


def graph(title: str, unit: str, *queries: Query, style: Style = LINE, width: int = 12,
          description: str = "") -> timeseries.Panel:
    """A time series of one or more queries, with a table legend on the right."""
    draw, fill, stacking = style
    p = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
         .span(width).height(8).unit(unit).min(0)
         .color_scheme(color(dm.FieldColorModeId.PALETTE_CLASSIC))
         .draw_style(draw).line_width(1).fill_opacity(fill)
         .show_points(common.VisibilityMode.NEVER).span_nulls(True)
         .stacking(cb.StackingConfig().mode(stacking).group("A"))
         .legend(cb.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                 .placement(common.LegendPlacement.RIGHT).show_legend(True).calcs(["lastNotNull"]))
         .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                  .sort(common.SortOrder.DESCENDING)))
    for i, (expr, legend) in enumerate(queries):
        p.with_target(query(chr(ord("A") + i), expr, legend))
    return p


def bars(title: str, unit: str, expr: str, legend: str, description: str = "") -> bargauge.Panel:
    """Horizontal bars of an instant query: counters as they stand now."""
    return (bargauge.Panel().title(title).description(description).datasource(DATASOURCE)
            .span(12).height(8).unit(unit).min(0)
            .color_scheme(color(dm.FieldColorModeId.PALETTE_CLASSIC))
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT).show_unfilled(True)
            .reduce_options(reduce_last())
            .with_target(query("A", expr, legend, instant=True)))


def draining_states(title: str, expr: str, legend: str) -> statetimeline.Panel:
    """A state timeline of a 0/1 gauge: serving (green) or draining (orange)."""
    states = {"0": dm.ValueMappingResult(text="serving", color="green"),
              "1": dm.ValueMappingResult(text="draining", color="orange")}
    return (statetimeline.Panel().title(title).description("").datasource(DATASOURCE)
            .span(24).height(6).unit("short")
            .color_scheme(color(dm.FieldColorModeId.THRESHOLDS))
            .mappings([dm.ValueMap(options=states)])
            .thresholds(thresholds((None, "green"), (1, "orange")))
            .show_value(common.VisibilityMode.AUTO).merge_values(True).row_height(0.9)
            .legend(cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(True))
            .with_target(query("A", expr, legend)))


# --- dashboards -----------------------------------------------------------------------------------

def dashboard(uid: str, title: str, description: str, panels: list[AnyPanel]) -> db.Dashboard:
    """A dashboard with the `datasource` and `machine` variables and links to the other three.
    The panels are laid out left to right, top to bottom, in the order given."""
    machines = "label_values(tender_machine_up, machine)"
    board = (
        db.Dashboard(title).uid(uid).description(description).tags(["tender"])
        .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR).timezone("browser")
        .time("now-15m", "now").refresh("5s").live_now(False).version(1)
        .timepicker(db.TimePicker().refresh_intervals(["1s", "5s", "10s", "30s", "1m", "5m"]))
        .link(db.DashboardLink("Tender dashboards").type(dm.DashboardLinkType.DASHBOARDS)
              .tags(["tender"]).as_dropdown(True).include_vars(True).keep_time(True))
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("machine").label("Machine").datasource(DATASOURCE)
            .query({"query": machines, "qryType": 1,
                    "refId": "PrometheusVariableQueryEditor-VariableQuery"})
            .multi(True).include_all(True).all_value(".*")
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC))
    )
    for panel_id, panel in enumerate(panels, start=1):
        board.with_panel(panel.id(panel_id))
    return board


OVERVIEW = dashboard(
    "tender-overview", "Tender — cluster overview",
    "Machines, their load, memory and processes, migrations and system calls.", [
        stat_panel("Machines up", "sum(tender_machine_up)",
                   description="Machines that answered the exporter's last poll."),
        stat_panel("Live processes", f'sum(tender_processes{{machine=~"$machine", {LIVE}}})'),
        stat_panel("Migrations (5 min)", 'sum(increase(tender_migrations_total{result="ok"}[5m]))',
                   decimals=0),
        stat_panel("Machines draining", 'sum(tender_machine_draining{machine=~"$machine"})'),
        graph("Processes by machine and state", "short",
              ('sum by (machine, state) (tender_processes{machine=~"$machine", state!="kernel"})',
               "{{machine}} {{state}}"), style=STACKED),
        graph("Run-queue load (runnable processes per computation)", "short",
              ('tender_machine_runnable_per_computation{machine=~"$machine"}', "{{machine}}"),
              description="Runnable and running processes per computation: what the balancer "
                          "evens out."),
        graph("Computation utilisation", "percentunit",
              ('sum by (machine) (rate(tender_computation_busy_seconds_total{machine=~"$machine"}'
               '[1m])) / sum by (machine) (tender_machine_computations{machine=~"$machine"})',
               "{{machine}}")),
        graph("Real-memory frames", "short",
              ('sum by (machine, state) (tender_memory_frames{machine=~"$machine"})',
               "{{machine}} {{state}}"), style=STACKED,
              description="4 KiB frames: free, used by processes, held by migrations in flight."),
        graph("Migrations per second by route", "ops",
              ('sum by (source, destination) (rate(tender_migrations_total{source=~"$machine"}'
               '[1m]))', "{{source}} → {{destination}}")),
        graph("System calls per second (top 10)", "ops",
              ('topk(10, sum by (syscall) (rate(tender_syscalls_total{machine=~"$machine"}[1m])))',
               "{{syscall}}"), description="Counted when a process ends on a machine."),
        bars("Unsupported system calls", "short",
             'sum by (machine, syscall) (tender_unsupported_syscalls_total{machine=~"$machine"})',
             "{{machine}} {{syscall}}",
             description="Calls answered -ENOSYS (files, sockets, fork...), by name."),
        graph("Exited processes per second", "ops",
              ('sum by (machine) (rate(tender_machine_exited_processes_total{machine=~"$machine"}'
               '[1m]))', "{{machine}}")),
    ])

PHASE_BUCKETS = "rate(tender_migration_phase_duration_seconds_bucket[1m])"
DURATION_BUCKETS = "rate(tender_migration_duration_seconds_bucket[1m])"

MIGRATIONS = dashboard(
    "tender-migrations", "Tender — migration phases and bytes",
    "Migrations by route and result, duration of each phase, bytes moved.", [
        stat_panel("Migrations", 'sum(tender_migrations_total{result="ok"})', decimals=0),
        stat_panel("Failed migrations",
                   'sum(tender_machine_migrations_total{direction="out", result="failed"})',
                   decimals=0),
        stat_panel("Bytes moved", "sum(tender_migration_bytes_total)", unit="bytes"),
        stat_panel("Mean migration time", "sum(tender_migration_duration_seconds_sum) / "
                   "sum(tender_migration_duration_seconds_count)", unit="s"),
        graph("Phase duration, median", "s",
              (f"histogram_quantile(0.5, sum by (le, phase) ({PHASE_BUCKETS}))", "{{phase}}")),
        graph("Phase duration, 95th percentile", "s",
              (f"histogram_quantile(0.95, sum by (le, phase) ({PHASE_BUCKETS}))", "{{phase}}")),
        graph("Mean time per phase", "s",
              ("sum by (phase) (rate(tender_migration_phase_duration_seconds_sum[1m])) / "
               "sum by (phase) (rate(tender_migration_phase_duration_seconds_count[1m]))",
               "{{phase}}"), style=STACKED_BARS,
              description="Stacked: a migration's time split by phase (freeze, create, export, "
                          "transform, commit, delete and the calls between)."),
        graph("Migration duration by strategy", "s",
              (f"histogram_quantile(0.5, sum by (le, strategy) ({DURATION_BUCKETS}))",
               "p50 {{strategy}}"),
              (f"histogram_quantile(0.95, sum by (le, strategy) ({DURATION_BUCKETS}))",
               "p95 {{strategy}}")),
        graph("Bytes moved per second by route", "Bps",
              ('sum by (source, destination) (rate(tender_migration_bytes_total{source=~"$machine"}'
               '[1m]))', "{{source}} → {{destination}}")),
        graph("Bytes per migration by strategy", "bytes",
              ("sum by (strategy) (rate(tender_migration_bytes_total[1m])) / "
               'sum by (strategy) (rate(tender_migrations_total{result="ok"}[1m]))',
               "{{strategy}}")),
        graph("Migrations by route and result (5 min)", "short",
              ("sum by (source, destination, result) "
               '(increase(tender_migrations_total{source=~"$machine"}[5m]))',
               "{{source}} → {{destination}} {{result}}"), style=BARS),
        bars("Migrations as each machine counts them", "short",
             "sum by (machine, direction, result) "
             '(tender_machine_migrations_total{machine=~"$machine"})',
             "{{machine}} {{direction}} {{result}}"),
        graph("Freeze time by migration mode", "s",
              ("histogram_quantile(0.5, sum by (le, mode) "
               "(rate(tender_migration_freeze_seconds_bucket[1m])))", "p50 {{mode}}"),
              ("histogram_quantile(0.95, sum by (le, mode) "
               "(rate(tender_migration_freeze_seconds_bucket[1m])))", "p95 {{mode}}"),
              description="How long a moving process did not run (freeze to commit): "
                          "stop-and-copy freezes for the whole copy, pre-copy only for the "
                          "last round."),
        bars("Migrations by mode and result", "short",
             "sum by (mode, result) (tender_migrations_by_mode_total)", "{{mode}} {{result}}"),
        bars("Bytes sent live and frozen, by mode", "bytes",
             "sum by (mode, sent) (tender_migration_mode_bytes_total)", "{{mode}} {{sent}}",
             description="Live: copied while the process ran (pre-copy rounds); frozen: "
                         "while it was stopped."),
        bars("Live rounds per migration, by mode", "short",
             "sum by (mode) (tender_migration_rounds_total) / "
             'sum by (mode) (tender_migrations_by_mode_total{result="ok"})', "{{mode}}"),
        graph("Phase time per second, by source machine", "s",
              ("sum by (machine, phase) "
               '(rate(tender_machine_migration_phase_seconds_total{machine=~"$machine"}[1m]))',
               "{{machine}} {{phase}}"), style=STACKED, width=24),
    ])


def per_resource(metric: str, extra: str = "") -> str:
    """`metric` summed by machine and resource, for the selected machines."""
    return f'sum by (machine, resource) ({metric}{{machine=~"$machine"{extra}}})'


def reuse_sum(metric: str) -> str:
    return f'sum by (resource) ({metric}{{machine=~"$machine"}})'


RESOURCES = dashboard(
    "tender-resources", "Tender — machine resources and pools",
    "Real memory and the resource managers of each machine: live, held and pooled resources, "
    "creation, reuse and deletion.", [
        graph("Real-memory frames by state", "short",
              ('sum by (machine, state) (tender_memory_frames{machine=~"$machine"})',
               "{{machine}} {{state}}"), style=STACKED),
        graph("Real memory in use", "percentunit",
              ('sum by (machine) (tender_memory_frames{machine=~"$machine", state!="free"}) / '
               'sum by (machine) (tender_memory_frames{machine=~"$machine"})', "{{machine}}")),
        graph("Pooled resources (pre-created)", "short",
              (per_resource("tender_resources", ', state="pool"'), "{{machine}} {{resource}}")),
        graph("Held resources (kept for reuse)", "short",
              (per_resource("tender_resources", ', state="held"'), "{{machine}} {{resource}}")),
        graph("Live resources", "short",
              (per_resource("tender_resources", ', state="live"'), "{{machine}} {{resource}}")),
        graph("Resource reuse ratio", "percentunit",
              (f"{reuse_sum('tender_resources_reused_total')} / "
               f"({reuse_sum('tender_resources_reused_total')} + "
               f"{reuse_sum('tender_resources_created_total')})", "{{resource}}"),
              description="Requests served from pools and held resources, of all requests."),
        graph("Resources created per second", "ops",
              ('sum by (machine, resource) (rate(tender_resources_created_total'
               '{machine=~"$machine"}[1m]))', "{{machine}} {{resource}}")),
        graph("Resources reused per second", "ops",
              ('sum by (machine, resource) (rate(tender_resources_reused_total'
               '{machine=~"$machine"}[1m]))', "{{machine}} {{resource}}")),
        graph("Resources deleted per second", "ops",
              ('sum by (machine, resource) (rate(tender_resources_deleted_total'
               '{machine=~"$machine"}[1m]))', "{{machine}} {{resource}}")),
        graph("Computation busy time per second", "s",
              ('sum by (machine) (rate(tender_computation_busy_seconds_total{machine=~"$machine"}'
               '[1m]))', "{{machine}}")),
        graph("Quanta per second", "ops",
              ('sum by (machine) (rate(tender_computation_quanta_total{machine=~"$machine"}[1m]))',
               "{{machine}}")),
        bars("Real memory size", "bytes", 'tender_memory_size_bytes{machine=~"$machine"}',
             "{{machine}}"),
    ])

BALANCER = dashboard(
    "tender-balancer", "Tender — balancer and drains",
    "The balancer's rounds, decisions and migrations, and the drains of cordoned machines.", [
        stat_panel("Balancer policy", "tender_balancer_info", legend="{{policy}}",
                   text_mode=common.BigValueTextMode.NAME),
        stat_panel("Decisions", "sum(tender_balancer_decisions_total)", decimals=0),
        stat_panel("Balancer failures", "sum(tender_balancer_failures_total)", decimals=0),
        stat_panel("Machines draining", 'sum(tender_machine_draining{machine=~"$machine"})'),
        graph("Rounds and decisions per second", "ops",
              ("sum by (policy) (rate(tender_balancer_rounds_total[1m]))", "rounds ({{policy}})"),
              ("sum by (policy) (rate(tender_balancer_decisions_total[1m]))",
               "decisions ({{policy}})")),
        graph("Balancer migrations by reason (per minute)", "short",
              ("sum by (reason) (increase(tender_balancer_migrations_total[1m]))", "{{reason}}"),
              style=STACKED_BARS),
        draining_states("Draining state", 'tender_machine_draining{machine=~"$machine"}',
                        "{{machine}}"),
        graph("Processes left on draining machines", "short",
              (f'sum by (machine) (tender_processes{{machine=~"$machine", {LIVE}}}) '
               '* on (machine) tender_machine_draining{machine=~"$machine"}', "{{machine}}")),
        bars("Drains finished", "short",
             'sum by (machine, result) (tender_balancer_drains_total{machine=~"$machine"})',
             "{{machine}} {{result}}"),
        graph("Mean drain time", "s",
              ('sum by (machine) (tender_balancer_drain_seconds_total{machine=~"$machine"}) / '
               'clamp_min(sum by (machine) (tender_balancer_drains_total{machine=~"$machine"}), 1)',
               "{{machine}}")),
        graph("Processes moved off by drains", "short",
              ("sum by (machine) "
               '(tender_balancer_drain_moved_processes_total{machine=~"$machine"})',
               "{{machine}}")),
        graph("Load per machine", "short",
              ('tender_machine_runnable_per_computation{machine=~"$machine"}', "{{machine}}")),
        graph("Load spread (most minus least loaded)", "short",
              ("max(tender_machine_runnable_per_computation) - "
               "min(tender_machine_runnable_per_computation)", "spread"),
              description="What the balancer's policy drives towards zero."),
    ])

DASHBOARDS = {
    "tender-overview.json": OVERVIEW,
    "tender-migrations.json": MIGRATIONS,
    "tender-resources.json": RESOURCES,
    "tender-balancer.json": BALANCER,
}


# --- output ---------------------------------------------------------------------------------------

def render(board: db.Dashboard) -> str:
    """The dashboard's JSON, byte-stable: sorted keys, indent 2, UTF-8 as is, a final newline."""
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(board.build()) + "\n"


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in DASHBOARDS.items():
        path = out / name
        path.write_text(render(board), encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    for path in write(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
