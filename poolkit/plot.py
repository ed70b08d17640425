"""Figures with matplotlib (optional): the bench's arms, a burst's timeline."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

COLOURS = {"direct": "#c0504d", "pooled": "#4f81bd", "naive": "#9bbb59", "low": "#1f3f6f",
}
REUSEPORT_COLOURS = ("#8064a2", "#b3a2c7", "#5c4776")


def plot_results(results: dict[str, Any], path: Path) -> str | None:
    """Draw ``results`` (the shape of bench/results.json) into ``path``.

    Returns the path written, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None

    storm, steady = results["connect_storm"], results["persistent"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))

    _bars(axes[0][0], storm, "Connect storm: pgbench -C -S, 32 clients",
          "transactions/s (new connection each)")
    _bars(axes[0][1], steady, "Persistent: pgbench -S, 32 clients", "transactions/s")

    _burst_panel(axes[1][0], results)
    _scram_panel(axes[1][1], results)

    meta = results["meta"]
    figure.suptitle(f"poolkit bench{' --quick' if meta['quick'] else ''}: PostgreSQL "
                    f"{meta['postgres']}, PgBouncer {meta['pgbouncer']}, "
                    f"{meta['machine']['cpus']} CPUs, medians of {meta['repeats']} run(s), "
                    f"{meta['date']}", fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def _bars(ax: Any, arms: dict[str, Any], title: str, ylabel: str) -> None:
    """Median tps per arm, with the tps and pgbench's average latency written on top."""
    names = list(arms)
    heights = [arms[a]["tps"] or 0 for a in names]
    bars = ax.bar(names, heights, color=[COLOURS.get(a, "grey") for a in names])
    for bar, name in zip(bars, names, strict=True):
        figures = arms[name]
        latency = figures.get("latency_ms")
        text = f"{figures['tps'] or 0:,.0f}" + (f"\n{latency:.1f} ms" if latency else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)  # fmt: skip
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.2)


def _burst_panel(ax: Any, results: dict[str, Any]) -> None:
    """Successful invocations and errors per arm; p99 latency and backends written on top."""
    arms = dict(results["burst"])
    low = results.get("scram", {}).get("burst")
    if low:
        arms[f"pooled\n{low['iterations']} iter."] = low
    names = list(arms)
    ok = [arms[a]["ok"] or 0 for a in names]
    errors = [arms[a]["errors"] or 0 for a in names]
    colours = [COLOURS.get(a.split("\n")[0], "grey") if "\n" not in a else COLOURS["low"]
               for a in names]  # fmt: skip
    ax.bar(names, ok, color=colours)
    ax.bar(names, errors, bottom=ok, color="white", edgecolor="#555555", hatch="//",
           label="errors (hatched)")  # fmt: skip
    for index, name in enumerate(names):
        figures = arms[name]
        p99, warm = figures["p99_ms"], figures.get("warm_p99_ms")
        backends = figures.get("peak_backends_of_user")
        text = f"p99 {p99:,.0f} ms" if p99 is not None else "p99 -"
        if warm is not None:
            text += f"\nwarm p99 {warm:,.1f} ms"
        if backends is not None:
            text += f"\n{backends:.0f} backends"
        ax.annotate(text, (index, ok[index] + errors[index]), ha="center", va="bottom",
                    fontsize=8)  # fmt: skip
    spec = results["meta"]["burst"]
    ax.set_title(f"Burst: {spec['instances']} instances + {spec['zombies']} zombies, "
                 f"{spec['duration_s']:.0f} s")  # fmt: skip
    ax.set_ylabel("invocations: ok (solid) + errors (hatched)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_ylim(0, max([o + e for o, e in zip(ok, errors, strict=True)] + [1]) * 1.3)


def _scram_panel(ax: Any, results: dict[str, Any]) -> None:
    """Connect rate per SCRAM iteration count: direct, pooled, pooled with so_reuseport."""
    scram = results.get("scram")
    if not scram:
        ax.set_visible(False)
        return
    counts = list(scram["pooled"])
    series = {"direct": [scram["direct"][n]["tps"] for n in counts],
              "pooled": [scram["pooled"][n]["tps"] for n in counts]}  # fmt: skip
    for n, by_processes in results.get("reuseport", {}).items():
        for processes, figures in by_processes.items():
            if processes != "1" and n in counts:
                key = f"pooled, so_reuseport x{processes}"
                series.setdefault(key, [None] * len(counts))[counts.index(n)] = figures["tps"]
    width = 0.8 / len(series)
    for offset, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (offset + 0.5) for i in range(len(counts))]
        colour = COLOURS.get(name) or REUSEPORT_COLOURS[offset % len(REUSEPORT_COLOURS)]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=name, color=colour)
        for bar, value in zip(bars, values, strict=True):
            if value:
                ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(counts)), [f"{n} iterations" for n in counts])
    ax.set_ylabel("connections/s (pgbench -C -S)")
    ax.set_title("Connect storm vs SCRAM-SHA-256 iterations (kit config)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_ylim(0, max([v or 0 for values in series.values() for v in values] + [1]) * 1.2)


def plot_timeline(result: Any, path: Path) -> str | None:
    """A burst over time: clients waiting, servers active, backends, errors (a BurstResult).

    Returns the path written, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = result.timeline
    seconds = [p.t for p in points]
    figure, (counts, errors) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                            height_ratios=(3, 1))  # fmt: skip
    for field, label, colour in (("waiting", "clients waiting (PgBouncer)", "#c0504d"),
                                 ("servers_active", "servers active (PgBouncer)", "#4f81bd"),
                                 ("backends", "Postgres client backends", "#9bbb59")):
        values = [getattr(p, field) for p in points]
        if any(v is not None for v in values):
            counts.step(seconds, [float("nan") if v is None else v for v in values],
                        where="post", label=label, color=colour)  # fmt: skip
    counts.set_ylabel("connections")
    counts.legend(loc="upper right", fontsize=8)
    counts.grid(alpha=0.3)
    widths = [b - a for a, b in itertools.pairwise(seconds)] + [0.05]
    errors.bar(seconds, [p.errors for p in points], width=widths, align="edge",
               color="#555555")  # fmt: skip
    errors.set_ylabel("errors")
    errors.set_xlabel("seconds since the spike began")
    figure.suptitle(f"poolkit burst ({result.label}): {result.instances} instances + "
                    f"{result.zombies} zombies, {result.ok} ok, {result.error_total} errors, "
                    f"{result.endpoint}", fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)
