"""The benchmark's figures: the papers' trade-off (CPU latency against MACs or top-1 accuracy, one line per
family) and the ratios by regime (each model over its baseline, one bar per regime)."""
from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure


def family_and_label(name: str) -> tuple[str, str]:
    """``'patnet_t2'`` -> ``('patnet', 'T2')``; names without a variant suffix are their own family."""
    family, _, variant = name.rpartition("_")
    return (family, variant.upper()) if family else (name, name)


def plot_section(results: dict) -> tuple[dict, str] | None:
    """The section and form the plot shows: single-thread eager fp32 latency if measured (else single-thread
    latency, else the first latency section), deploy form when measured (what users run), else training."""
    latency = [s for s in results["sections"] if s["kind"] == "latency" and s["results"]]
    if not latency:
        return None
    single = [s for s in latency if s["threads"] == 1] or latency
    section = next((s for s in single if (s.get("runtime", "eager"), s.get("dtype", "fp32")) == ("eager", "fp32")),
                   single[0])
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


def _regime_label(section: dict, results: dict) -> str:
    chans = sorted({info.get("in_chans", 3) for info in results["models"].values()})
    threads = "" if section["threads"] is None else f", {section['threads']}t"
    return (f"{section.get('runtime', 'eager')} {section['precision']}{threads}, b{section['batch_size']}, "
            f"{'/'.join(map(str, chans))}x{section['img_size']}x{section['img_size']}")


def ratio_bars(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per model pair (``'patnet_t0 / fasternet_t0'``), the median ratio in each regime, over ``runs``'
    sections (deploy form where measured)."""
    bars: dict[str, dict[str, float]] = {}
    for results in runs:
        for section in results["sections"]:
            for name, entries in section["results"].items():
                entry = entries.get("deploy", entries.get("train"))
                if entry is not None and entry["ratio"] is not None:
                    pair = f"{name} / {entry['ratio']['baseline']}"
                    bars.setdefault(pair, {})[_regime_label(section, results)] = entry["ratio"]["median"]
    return bars


def plot_ratios(runs: list[dict], path: str | Path) -> bool:
    """Draw each model's ratio to its baseline per regime (horizontal bars, a line at 1) to ``path``;
    ``False`` when no ratio has been measured yet."""
    bars = ratio_bars(runs)
    if not bars:
        return False
    plt = pyplot()
    regimes = list(dict.fromkeys(regime for values in bars.values() for regime in values))
    height = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.25 * len(regimes) * max(1.0, len(bars) / 2)), dpi=150)
    for i, (pair, values) in enumerate(bars.items()):
        ys = [regimes.index(regime) + i * height for regime in values]
        ax.barh(ys, list(values.values()), height=height, label=pair)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([r + 0.4 - height / 2 for r in range(len(regimes))], regimes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time / baseline time (median of per-round ratios; below 1: faster)", fontsize=8)
    ax.set_title(f"{runs[0]['header'].get('cpu_description', runs[0]['header']['cpu'])}", fontsize=8)
    ax.grid(True, axis="x", linestyle=":", linewidth=0.8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path, dpi=150)
    return True
