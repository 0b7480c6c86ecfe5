//! Bench plots people can read (issue 18): every server of one run on the same axes, machines
//! booted (storm) or roots verified (root) over time as step curves with a legend, and stage
//! latencies side by side, with ticks, grid and units. Drawn by plotters' SVG backend without its font stack: SVG text is laid out by
//! plotters' estimate and rendered by the viewer, so no font files are needed to build or run.
use anyhow::{Context as _, bail};
use plotters::{
    coord::Shift,
    prelude::*,
    style::full_palette::{BLUE_700, GREEN_700, GREY_600, ORANGE_700, PURPLE_700, RED_700},
};

use super::{
    report::{Percentiles, Summary},
    root::RootSummary,
};

/// One server's storm (or root fetch), as the plots need it.
#[derive(Debug, Clone)]
pub struct StormSeries {
    /// The server (the bench's `--label`).
    pub label: String,
    pub clients: usize,
    /// What a machine's finish is: "booted" (storm) or "verified its root" (root).
    pub finish: &'static str,
    /// When each machine finished, seconds since the bench started, ascending.
    pub booted_at_s: Vec<f64>,
    /// Latency percentiles per stage, in stage order; `boot` (power-on to last byte) last.
    pub stages: Vec<(String, Percentiles)>,
}

impl StormSeries {
    pub fn of(summary: &Summary) -> Self {
        let mut booted_at_s: Vec<f64> = summary
            .machines
            .iter()
            .filter_map(|m| m.boot_ms.map(|b| (m.started_ms + b) / 1e3))
            .collect();
        booted_at_s.sort_by(f64::total_cmp);
        let mut stages: Vec<(String, Percentiles)> = summary
            .stages
            .iter()
            .map(|s| (s.stage.name().to_owned(), s.latency.clone()))
            .collect();
        if let Some(boot) = &summary.boot {
            stages.push(("boot".into(), boot.clone()));
        }
        Self {
            label: summary.label.clone(),
            clients: summary.clients,
            finish: "booted",
            booted_at_s,
            stages,
        }
    }

    pub fn of_root(summary: &RootSummary) -> Self {
        let mut booted_at_s: Vec<f64> = summary
            .machines
            .iter()
            .filter_map(|m| m.root_ms.map(|r| (m.started_ms + r) / 1e3))
            .collect();
        booted_at_s.sort_by(f64::total_cmp);
        let stages = [
            ("manifest", &summary.manifest),
            ("root", &summary.time_to_root),
        ]
        .into_iter()
        .filter_map(|(name, p)| Some((name.to_owned(), p.clone()?)))
        .collect();
        Self {
            label: format!("{} ({})", summary.label, summary.mode),
            clients: summary.clients,
            finish: "verified its root",
            booted_at_s,
            stages,
        }
    }

    /// From a storm's or a root bench's JSON report (`stampede bench storm|root --json`).
    pub fn from_json(report: &serde_json::Value) -> anyhow::Result<Self> {
        let label = report["label"]
            .as_str()
            .context("the report has no label")?
            .to_owned();
        let clients = report["clients"]
            .as_u64()
            .context("the report has no clients")? as usize;
        // A root bench's machines finish at `root_ms`, a storm's at `boot_ms`.
        let root = report.get("time_to_root").is_some();
        let finish_key = if root { "root_ms" } else { "boot_ms" };
        let mut booted_at_s: Vec<f64> = report["machines"]
            .as_array()
            .context("the report has no machines")?
            .iter()
            .filter_map(|m| Some((m["started_ms"].as_f64()? + m[finish_key].as_f64()?) / 1e3))
            .collect();
        booted_at_s.sort_by(f64::total_cmp);
        let percentiles = |p: &serde_json::Value| -> Option<Percentiles> {
            Some(Percentiles {
                count: p["count"].as_u64()? as usize,
                p50_ms: p["p50_ms"].as_f64()?,
                p95_ms: p["p95_ms"].as_f64()?,
                p99_ms: p["p99_ms"].as_f64()?,
                max_ms: p["max_ms"].as_f64()?,
            })
        };
        let mut stages: Vec<(String, Percentiles)> = report["stages"]
            .as_array()
            .map(|stages| {
                stages
                    .iter()
                    .filter_map(|s| {
                        Some((s["stage"].as_str()?.to_owned(), percentiles(&s["latency"])?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(boot) = percentiles(&report["boot"]) {
            stages.push(("boot".into(), boot));
        }
        for (name, key) in [("manifest", "manifest"), ("root", "time_to_root")] {
            if let Some(p) = percentiles(&report[key]) {
                stages.push((name.into(), p));
            }
        }
        Ok(Self {
            label,
            clients,
            finish: if root { "verified its root" } else { "booted" },
            booted_at_s,
            stages,
        })
    }
}

const COLORS: [RGBColor; 6] = [
    BLUE_700, ORANGE_700, GREEN_700, RED_700, PURPLE_700, GREY_600,
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Both charts side by side, as an SVG document.
pub fn storm_svg(series: &[StormSeries]) -> anyhow::Result<String> {
    if series.is_empty() {
        bail!("nothing to plot");
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(560);
        booted_over_time(&left, series)?;
        stage_latencies(&right, series)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}

/// Machines booted over time: a step per machine, one curve per server.
fn booted_over_time(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    series: &[StormSeries],
) -> anyhow::Result<()> {
    let clients = series.iter().map(|s| s.clients).max().unwrap_or(1).max(1);
    let t_max = series
        .iter()
        .filter_map(|s| s.booted_at_s.last().copied())
        .fold(0.0_f64, f64::max)
        .max(0.001)
        * 1.05;
    let finish = series[0].finish;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("machines that {finish}, over time ({clients} machines)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..clients as f64 * 1.05)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since power-on")
        .y_desc(format!("machines that {finish}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(plot_error)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        // A step curve: flat until a machine finishes, then up by one.
        let mut points = vec![(0.0, 0.0)];
        for (n, t) in s.booted_at_s.iter().enumerate() {
            points.push((*t, n as f64));
            points.push((*t, (n + 1) as f64));
        }
        points.push((t_max, s.booted_at_s.len() as f64));
        let label = format!("{} ({}/{})", s.label, s.booted_at_s.len(), s.clients);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// p50 (solid) and p99 (light) per stage, one bar pair per server, on a log scale.
fn stage_latencies(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    series: &[StormSeries],
) -> anyhow::Result<()> {
    // Stages in the order the first server that has them lists them.
    let mut stages: Vec<String> = Vec::new();
    for s in series {
        for (name, _) in &s.stages {
            if !stages.contains(name) {
                stages.push(name.clone());
            }
        }
    }
    let values = series
        .iter()
        .flat_map(|s| s.stages.iter().map(|(_, p)| p.p99_ms));
    let v_max = values.clone().fold(1.0_f64, f64::max) * 2.0;
    let v_min = values.fold(v_max, f64::min).clamp(0.01, 1.0) / 2.0;
    let groups = stages.len().max(1);
    let names = stages.clone();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency per stage: p50 (solid), p99 (light)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..groups as f64, (v_min..v_max).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&move |x| {
            // Labels at the middle of each group only.
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("milliseconds (log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    let width = 0.8 / series.len() as f64;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        let bars = s.stages.iter().filter_map(|(name, p)| {
            let g = stages.iter().position(|n| n == name)? as f64;
            let x0 = g + 0.1 + i as f64 * width;
            Some((x0, p.clone()))
        });
        let mut p99 = Vec::new();
        let mut p50 = Vec::new();
        for (x0, p) in bars {
            let x1 = x0 + width * 0.9;
            p99.push(Rectangle::new(
                [(x0, v_min), (x1, p.p99_ms.max(v_min))],
                c.mix(0.3).filled(),
            ));
            p50.push(Rectangle::new(
                [(x0, v_min), (x1, p.p50_ms.max(v_min))],
                c.filled(),
            ));
        }
        chart.draw_series(p99).map_err(plot_error)?;
        chart
            .draw_series(p50)
            .map_err(plot_error)?
            .label(s.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label: &str, booted: &[f64]) -> StormSeries {
        let p = Percentiles::of(vec![1.0, 20.0, 300.0]).unwrap();
        StormSeries {
            label: label.into(),
            clients: 4,
            finish: "booted",
            booted_at_s: booted.to_vec(),
            stages: vec![("dhcp".into(), p.clone()), ("boot".into(), p)],
        }
    }

    #[test]
    fn servers_share_the_axes_with_a_legend() {
        let svg = storm_svg(&[
            series("stampede", &[0.5, 1.0, 1.5, 2.0]),
            series("dnsmasq+nginx", &[1.0, 3.0]),
        ])
        .unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "stampede (4/4)",
            "dnsmasq+nginx (2/4)",
            "dhcp",
            "boot",
            "machines that booted",
        ] {
            assert!(svg.contains(text), "{text} in the plot");
        }
    }

    #[test]
    fn a_report_round_trips_through_json() {
        let report = serde_json::json!({
            "label": "stampede", "clients": 2,
            "machines": [{"started_ms": 10.0, "boot_ms": 990.0}, {"started_ms": 0.0, "boot_ms": null}],
            "stages": [{"stage": "dhcp", "latency": {"count": 1, "p50_ms": 5.0, "p95_ms": 5.0, "p99_ms": 5.0, "max_ms": 5.0}}],
            "boot": null,
        });
        let s = StormSeries::from_json(&report).unwrap();
        assert_eq!(s.booted_at_s, vec![1.0]);
        assert_eq!(s.stages.len(), 1);
        assert!(StormSeries::from_json(&serde_json::json!({})).is_err());

        let root = serde_json::json!({
            "label": "nginx", "clients": 1,
            "machines": [{"started_ms": 0.0, "root_ms": 2000.0}],
            "manifest": null,
            "time_to_root": {"count": 1, "p50_ms": 2000.0, "p95_ms": 2000.0, "p99_ms": 2000.0, "max_ms": 2000.0},
        });
        let s = StormSeries::from_json(&root).unwrap();
        assert_eq!(
            (s.booted_at_s.clone(), s.finish),
            (vec![2.0], "verified its root")
        );
        assert_eq!(s.stages[0].0, "root");
    }
}
