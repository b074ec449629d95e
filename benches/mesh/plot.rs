//! The picture of the open-loop latencies: per scenario, the percentiles
//! from p50 to p99.9 of the app reached directly and through the sidecar
//! pair, side by side, as one SVG (`target/mesh-latency.svg`).

use std::path::Path;

use plotters::prelude::*;

/// The percentiles plotted, and how their axis labels read.
pub const PERCENTILES: [(f64, &str); 6] = [
    (50.0, "p50"),
    (75.0, "p75"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.5, "p99.5"),
    (99.9, "p99.9"),
];

/// One scenario's curves: its name, the rate, and per target (`direct`,
/// `mesh`) the latency in ms at each of [`PERCENTILES`].
pub struct Panel {
    pub scenario: String,
    pub rate: u64,
    pub curves: Vec<(String, Vec<f64>)>,
}

pub fn write_svg(
    panels: &[Panel],
    out: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if panels.is_empty() {
        return Ok(());
    }
    let width = 360 * panels.len() as u32;
    let root = SVGBackend::new(out, (width, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.draw(&Text::new(
        "Open-loop latency: the app directly and through a Warden sidecar pair (ms)",
        (10, 12),
        ("sans-serif", 18).into_font(),
    ))?;
    let areas = body.split_evenly((1, panels.len()));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let top = panel
            .curves
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(0.1)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} @ {}/s", panel.scenario, panel.rate),
                ("sans-serif", 15),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..(PERCENTILES.len() - 1) as f64, 0.0..top)?;
        chart
            .configure_mesh()
            .x_labels(PERCENTILES.len())
            .x_label_formatter(&|x| {
                PERCENTILES
                    .get(x.round() as usize)
                    .map_or(String::new(), |p| p.1.to_owned())
            })
            .y_desc("ms")
            .draw()?;
        for (target, values) in &panel.curves {
            let color = if target == "direct" { BLUE } else { RED };
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| (i as f64, *v))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(if target == "direct" {
                    "app directly"
                } else {
                    "through the sidecar pair"
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
