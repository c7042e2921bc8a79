"""The papers' trade-off figure: CPU latency (x) against MACs or top-1 accuracy (y), one line per family."""
from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure


def family_and_label(name: str) -> tuple[str, str]:
    """``'patnet_t2'`` -> ``('patnet', 'T2')``; names without a variant suffix are their own family."""
    family, _, variant = name.rpartition("_")
    return (family, variant.upper()) if family else (name, name)


def plot_section(results: dict) -> tuple[dict, str] | None:
    """The section and form the plot shows: single-thread latency if measured (else the first latency
    section), deploy form when measured (what users run), else the training form."""
    latency = [s for s in results["sections"] if s["kind"] == "latency" and s["results"]]
    if not latency:
        return None
    section = next((s for s in latency if s["threads"] == 1), latency[0])
    form = "deploy" if "deploy" in results["header"]["config"]["forms"] else "train"
    return section, form


def plot_results(results: dict, path: str | Path, y: str = "macs") -> bool:
    """Draw the latency plot to ``path`` (PNG); ``False`` when no latency has been measured yet."""
    plt = pyplot()
    chosen = plot_section(results)
    if chosen is None:
        return False
    section, form = chosen
    families: dict[str, list[tuple[float, float, str]]] = {}
    for name, info in results["models"].items():
        entry = section["results"].get(name, {}).get(form)
        value = info["macs"] / 1e9 if y == "macs" else info.get("accuracy")
        if entry is None or value is None:
            continue
        family, label = family_and_label(name)
        families.setdefault(family, []).append((entry["median_ms"], value, label))
    if not families:
        return False

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
    markers = "os^Dv<>ph*"
    for i, (family, points) in enumerate(families.items()):
        points.sort()
        xs, ys, _ = zip(*points)
        ax.plot(xs, ys, marker=markers[i % len(markers)], linewidth=1.8, markersize=6, label=family)
        for x, y_value, label in points:
            ax.annotate(label, (x, y_value), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlabel(f"{section['title']}, {form} form (ms, median)")
    ax.set_ylabel("MACs (G)" if y == "macs" else "top-1 accuracy (%)")
    status = "" if section["complete"] else " (partial run)"
    ax.set_title(f"{results['header']['cpu']}, torch {results['header']['torch']}{status}", fontsize=9)
    ax.grid(True, linestyle=":", linewidth=0.8)
    ax.legend()
    save_figure(fig, path, dpi=150)
    return True
