//! PNG plots of a run: the ICP calibration plot, the training curves and a 2-D PCA projection
//! of embeddings coloured by class.
//!
//! Plots are drawn with plotters into memory and written as PNG with `image`. Text uses
//! DejaVu Sans embedded in the binary (the `dejavu` crate, through plotters' `ab_glyph`
//! feature): no system font, fontconfig or apt package is needed, so a fresh machine draws
//! the same pictures as a developer's.

// The run pipeline calls these once it records plots; until then only the tests do.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use shared::icp::IcpEvaluation;

/// The most points that `embedding_projection` draws; more are subsampled evenly.
pub const MAX_SCATTER_POINTS: usize = 5000;

/// Why a plot could not be made; each names the PNG it was for.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot plot {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("cannot draw plot {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("cannot write plot {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot draw plot {path}: the embedded DejaVu Sans font could not be loaded")]
    Font { path: PathBuf },
}

/// Why `pca_2d` cannot project its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PcaError {
    #[error("no embeddings to project")]
    Empty,
    #[error("the embedding dimension is 0")]
    ZeroDim,
    #[error("{len} values are not a whole number of rows of dimension {dim}")]
    Shape { len: usize, dim: usize },
    #[error("embedding value {index} (row {row}) is not finite: {value}")]
    NonFinite {
        index: usize,
        row: usize,
        value: f32,
    },
}

const FONT: &str = "sans-serif";
const WIDE: (u32, u32) = (1200, 600);
/// tab10: distinct line colours.
const LINE_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type DrawResult = Result<(), Box<dyn StdError>>;
type RowValue = fn(&shared::icp::EpsilonRow) -> f64;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font with plotters once per process.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    })
}

fn input_error(path: &Path, reason: impl Into<String>) -> PlotError {
    PlotError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Draws into a white RGB buffer of `size` and writes it to `path` as PNG.
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), PlotError> {
    if !font_ready() {
        return Err(PlotError::Font {
            path: path.to_path_buf(),
        });
    }
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Into::into));
        drawn.map_err(|e| PlotError::Draw {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    image::save_buffer_with_format(
        path,
        &buf,
        w,
        h,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn bold(size: u32) -> TextStyle<'static> {
    (FONT, size)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK)
}

fn legend_line(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

fn legend_box(colour: RGBAColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], colour.filled())
}

// ---------------------------------------------------------------------------------------------
// Calibration plot
// ---------------------------------------------------------------------------------------------

/// The ICP calibration plot (1200 x 600 PNG): on the left the error rate against epsilon with
/// the diagonal `y = x` and a band of 3 sigma around it, sigma = sqrt(eps (1 - eps) / T) with
/// T = `independent_units` (the number of validation tracks: frames of one track are not
/// independent, so T, not the frame count, sets the band); on the right the fractions of
/// empty, singleton and multiple-label sets and the mean set size (right axis) against
/// epsilon. The title gives ECE and MCE.
pub fn calibration_plot(
    eval: &IcpEvaluation,
    independent_units: usize,
    path: &Path,
) -> Result<(), PlotError> {
    let rows = &eval.rows;
    if rows.is_empty() {
        return Err(input_error(path, "the ICP evaluation has no epsilon rows"));
    }
    if independent_units == 0 {
        return Err(input_error(
            path,
            "the number of independent units (validation tracks) is 0",
        ));
    }
    if let Some(r) = rows.iter().find(|r| {
        ![
            r.epsilon,
            r.error_rate,
            r.mean_set_size,
            r.empty,
            r.singleton,
            r.multiple,
        ]
        .iter()
        .all(|v| v.is_finite())
    }) {
        return Err(input_error(
            path,
            format!("the row at epsilon {} has a non-finite value", r.epsilon),
        ));
    }
    let t = independent_units as f64;
    let sigma = |e: f64| (e * (1.0 - e) / t).max(0.0).sqrt();
    let eps_max = rows.iter().map(|r| r.epsilon).fold(0.0, f64::max);
    let x_hi = (eps_max * 1.03).max(1e-3);
    let band: Vec<(f64, f64, f64)> = (0..=200)
        .map(|i| {
            let e = x_hi * i as f64 / 200.0;
            (e, (e - 3.0 * sigma(e)).max(0.0), e + 3.0 * sigma(e))
        })
        .collect();
    let err_max = rows.iter().map(|r| r.error_rate).fold(0.0, f64::max);
    let band_max = band.iter().map(|b| b.2).fold(0.0, f64::max);
    let y_hi = (err_max.max(band_max) * 1.05).max(1e-3);
    let mean_max = rows.iter().map(|r| r.mean_set_size).fold(0.0, f64::max);
    let y2_hi = (mean_max * 1.1).max(1.1);
    let title = format!(
        "ICP calibration: {} examples, {} classes; ECE {:.4}, MCE {:.4}",
        eval.n_samples, eval.n_classes, eval.ece, eval.mce
    );
    let note = format!(
        "Band: \u{3b5} \u{b1} 3\u{3c3}, \u{3c3} = \u{221a}(\u{3b5}(1\u{2212}\u{3b5})/T), T = {independent_units} \
         independent units (validation tracks; frames of one track are not independent)."
    );

    render(path, WIDE, |root| {
        let body = root.titled(&title, bold(22))?;
        let (panels, foot) = body.split_vertically(body.dim_in_pixel().1 - 28);
        foot.draw(&Text::new(note.as_str(), (20, 4), font(15)))?;
        let (left, right) = panels.split_horizontally(panels.dim_in_pixel().0 / 2);

        // Left: error rate vs epsilon.
        let mut chart = ChartBuilder::on(&left)
            .caption("Error rate vs significance level \u{3b5}", font(18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_hi, 0.0..y_hi)?;
        chart
            .configure_mesh()
            .x_desc("\u{3b5}")
            .y_desc("error rate (true label not in the set)")
            .label_style(font(13))
            .axis_desc_style(font(15))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let band_colour = RGBColor(31, 119, 180).mix(0.18);
        let polygon: Vec<(f64, f64)> = band
            .iter()
            .map(|b| (b.0, b.2.min(y_hi)))
            .chain(band.iter().rev().map(|b| (b.0, b.1)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(polygon, band_colour.filled())))?
            .label(format!("\u{3b5} \u{b1} 3\u{3c3} (T = {independent_units})"))
            .legend(legend_box(band_colour));
        let diag_hi = x_hi.min(y_hi);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (diag_hi, diag_hi)],
                8,
                5,
                BLACK.stroke_width(1),
            ))?
            .label("y = \u{3b5}")
            .legend(legend_line(BLACK));
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(
                LineSeries::new(
                    rows.iter().map(|r| (r.epsilon, r.error_rate)),
                    red.stroke_width(2),
                )
                .point_size(if rows.len() <= 40 { 3 } else { 0 }),
            )?
            .label("error rate")
            .legend(legend_line(red));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(font(14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;

        // Right: set sizes vs epsilon.
        let mut chart = ChartBuilder::on(&right)
            .caption("Prediction sets vs \u{3b5}", font(18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0.0..x_hi, 0.0..1.05)?
            .set_secondary_coord(0.0..x_hi, 0.0..y2_hi);
        chart
            .configure_mesh()
            .x_desc("\u{3b5}")
            .y_desc("fraction of examples")
            .label_style(font(13))
            .axis_desc_style(font(15))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("mean set size")
            .label_style(font(13))
            .axis_desc_style(font(15))
            .draw()?;
        let fractions: [(&str, RGBColor, RowValue); 3] = [
            ("singleton", LINE_COLOURS[2], |r| r.singleton),
            ("multiple", LINE_COLOURS[1], |r| r.multiple),
            ("empty", LINE_COLOURS[7], |r| r.empty),
        ];
        for (name, colour, get) in fractions {
            chart
                .draw_series(
                    LineSeries::new(
                        rows.iter().map(|r| (r.epsilon, get(r))),
                        colour.stroke_width(2),
                    )
                    .point_size(if rows.len() <= 40 { 3 } else { 0 }),
                )?
                .label(name)
                .legend(legend_line(colour));
        }
        let purple = LINE_COLOURS[4];
        chart
            .draw_secondary_series(DashedLineSeries::new(
                rows.iter().map(|r| (r.epsilon, r.mean_set_size)),
                10,
                4,
                purple.stroke_width(2),
            ))?
            .label("mean set size (right axis)")
            .legend(legend_line(purple));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .label_font(font(14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Training curves
// ---------------------------------------------------------------------------------------------

type Curve = (String, Vec<(u64, f64)>);

/// Training curves (1200 x 600 PNG) from `(step, name, value)` points: on the left every
/// series whose name contains "loss" (log scale when it spans more than a decade and is
/// positive); on the right the other metrics (validation accuracy, silhouette, ...) and the
/// learning rate ("lr" or "learning_rate", on the right axis). Non-finite values are skipped.
pub fn training_curves<S: AsRef<str>>(
    history: &[(u64, S, f64)],
    path: &Path,
) -> Result<(), PlotError> {
    if history.is_empty() {
        return Err(input_error(path, "the training history is empty"));
    }
    let mut curves: Vec<Curve> = Vec::new();
    for (step, name, value) in history {
        if !value.is_finite() {
            continue;
        }
        let name = name.as_ref();
        match curves.iter_mut().find(|c| c.0 == name) {
            Some(c) => c.1.push((*step, *value)),
            None => curves.push((name.to_string(), vec![(*step, *value)])),
        }
    }
    if curves.is_empty() {
        return Err(input_error(
            path,
            "the training history has no finite values",
        ));
    }
    for c in &mut curves {
        c.1.sort_by_key(|p| p.0);
    }
    let is_lr = |n: &str| n == "lr" || n.contains("learning_rate");
    let (losses, rest): (Vec<Curve>, Vec<Curve>) =
        curves.into_iter().partition(|c| c.0.contains("loss"));
    let (lrs, metrics): (Vec<Curve>, Vec<Curve>) = rest.into_iter().partition(|c| is_lr(&c.0));
    let all = losses.iter().chain(&lrs).chain(&metrics);
    let s_lo = all
        .clone()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .min()
        .unwrap_or(0);
    let s_hi = all.flat_map(|c| c.1.iter().map(|p| p.0)).max().unwrap_or(1);
    let steps = s_lo..s_hi.max(s_lo + 1);

    render(path, WIDE, |root| {
        let body = root.titled("Training curves", bold(22))?;
        let (left, right) = body.split_horizontally(body.dim_in_pixel().0 / 2);
        loss_panel(&left, steps.clone(), &losses)?;
        metrics_panel(&right, steps.clone(), &metrics, &lrs)?;
        Ok(())
    })
}

fn value_range(curves: &[Curve]) -> Option<(f64, f64)> {
    let vals = curves.iter().flat_map(|c| c.1.iter().map(|p| p.1));
    let lo = vals.clone().fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    (lo <= hi).then_some((lo, hi))
}

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad)..(hi + pad)
}

fn empty_note(area: &Area<'_>, caption: &str, note: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        caption.to_string(),
        (w as i32 / 2, 20),
        font(18).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    area.draw(&Text::new(
        note.to_string(),
        (w as i32 / 2, h as i32 / 2),
        font(16).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    Ok(())
}

fn loss_panel(area: &Area<'_>, steps: std::ops::Range<u64>, losses: &[Curve]) -> DrawResult {
    let Some((lo, hi)) = value_range(losses) else {
        return empty_note(area, "Loss", "(no loss recorded)");
    };
    // plotters' log and linear axes are different types: one macro draws on either.
    macro_rules! draw_losses {
        ($yrange:expr, $ydesc:expr) => {{
            let mut chart = ChartBuilder::on(area)
                .caption("Loss", font(18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(steps, $yrange)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc($ydesc)
                .label_style(font(13))
                .axis_desc_style(font(15))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            for (i, (name, points)) in losses.iter().enumerate() {
                let colour = LINE_COLOURS[i % LINE_COLOURS.len()];
                chart
                    .draw_series(
                        LineSeries::new(points.iter().copied(), colour.stroke_width(2))
                            .point_size(if points.len() <= 30 { 3 } else { 0 }),
                    )?
                    .label(name.as_str())
                    .legend(legend_line(colour));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(font(14))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()?;
        }};
    }
    if lo > 0.0 && hi / lo > 10.0 {
        draw_losses!((lo / 1.2..hi * 1.2).log_scale(), "loss (log scale)");
    } else {
        draw_losses!(padded(lo, hi), "loss");
    }
    Ok(())
}

fn metrics_panel(
    area: &Area<'_>,
    steps: std::ops::Range<u64>,
    metrics: &[Curve],
    lrs: &[Curve],
) -> DrawResult {
    if metrics.is_empty() && lrs.is_empty() {
        return empty_note(area, "Validation metrics", "(no metric recorded)");
    }
    let (lo, hi) = value_range(metrics).unwrap_or((0.0, 1.0));
    // Accuracies and silhouettes live in [-1, 1]: keep 0..1 in view when they fit in it.
    let y = if lo >= -1.0 && hi <= 1.0 {
        padded(lo.min(0.0), hi.max(1.0))
    } else {
        padded(lo, hi)
    };
    let (lr_lo, lr_hi) = value_range(lrs).unwrap_or((0.0, 1.0));
    let y2 = padded(lr_lo.min(0.0), lr_hi);
    let mut chart = ChartBuilder::on(area)
        .caption("Validation metrics", font(18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(if lrs.is_empty() { 0 } else { 70 })
        .build_cartesian_2d(steps.clone(), y)?
        .set_secondary_coord(steps, y2);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("metric value")
        .label_style(font(13))
        .axis_desc_style(font(15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    if !lrs.is_empty() {
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .label_style(font(13))
            .axis_desc_style(font(15))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()?;
    }
    for (i, (name, points)) in metrics.iter().enumerate() {
        let colour = LINE_COLOURS[(i + 2) % LINE_COLOURS.len()];
        chart
            .draw_series(
                LineSeries::new(points.iter().copied(), colour.stroke_width(2))
                    .point_size(if points.len() <= 30 { 3 } else { 0 }),
            )?
            .label(name.as_str())
            .legend(legend_line(colour));
    }
    for (name, points) in lrs {
        let grey = LINE_COLOURS[7];
        chart
            .draw_secondary_series(DashedLineSeries::new(
                points.iter().copied(),
                8,
                4,
                grey.stroke_width(1),
            ))?
            .label(format!("{name} (right axis)"))
            .legend(legend_line(grey));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(font(14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PCA and the embedding projection
// ---------------------------------------------------------------------------------------------

/// Rows per block of the covariance sums.
const PCA_BLOCK: usize = 256;
const POWER_MAX_ITER: usize = 3000;
const POWER_TOL: f64 = 1e-12;

/// Projects `n x dim` row-major embeddings onto their first two principal components.
///
/// Returns one `[pc1, pc2]` per row (centred) and the explained variance ratio of each
/// component (its eigenvalue over the total variance, 0 when all rows are equal). The
/// covariance is summed in f64 over blocks of rows; the top two eigenvectors come from
/// power iteration with deflation, each signed so that its largest-magnitude entry is
/// positive (the first such entry on ties), so the result is deterministic. With `dim == 1`
/// the second coordinate is 0.
pub fn pca_2d(emb: &[f32], dim: usize) -> Result<(Vec<[f32; 2]>, [f64; 2]), PcaError> {
    if dim == 0 {
        return Err(PcaError::ZeroDim);
    }
    if emb.is_empty() {
        return Err(PcaError::Empty);
    }
    if !emb.len().is_multiple_of(dim) {
        return Err(PcaError::Shape {
            len: emb.len(),
            dim,
        });
    }
    if let Some(index) = emb.iter().position(|v| !v.is_finite()) {
        return Err(PcaError::NonFinite {
            index,
            row: index / dim,
            value: emb[index],
        });
    }
    let n = emb.len() / dim;
    let mut mean = vec![0f64; dim];
    for row in emb.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    // Upper triangle of X_c^T X_c, one f64 partial per block of rows.
    let mut cov = vec![0f64; dim * dim];
    let mut block = vec![0f64; dim * dim];
    let mut centred = vec![0f64; dim];
    for rows in emb.chunks(PCA_BLOCK * dim) {
        block.fill(0.0);
        for row in rows.chunks_exact(dim) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = f64::from(v) - m;
            }
            for a in 0..dim {
                let ca = centred[a];
                if ca == 0.0 {
                    continue;
                }
                for (acc, cb) in block[a * dim + a..(a + 1) * dim]
                    .iter_mut()
                    .zip(&centred[a..])
                {
                    *acc += ca * cb;
                }
            }
        }
        for (c, b) in cov.iter_mut().zip(&block) {
            *c += b;
        }
    }
    let denom = n.saturating_sub(1).max(1) as f64;
    for a in 0..dim {
        for b in a..dim {
            let v = cov[a * dim + b] / denom;
            cov[a * dim + b] = v;
            cov[b * dim + a] = v;
        }
    }
    let total: f64 = (0..dim).map(|a| cov[a * dim + a]).sum();
    let (v1, l1) = top_eigenvector(&cov, dim, None);
    let (v2, l2) = if dim > 1 {
        let mut deflated = cov.clone();
        for a in 0..dim {
            for b in 0..dim {
                deflated[a * dim + b] -= l1 * v1[a] * v1[b];
            }
        }
        top_eigenvector(&deflated, dim, Some(&v1))
    } else {
        (vec![0.0; dim], 0.0)
    };
    let projected = emb
        .chunks_exact(dim)
        .map(|row| {
            let (mut p1, mut p2) = (0f64, 0f64);
            for (((&v, m), a), b) in row.iter().zip(&mean).zip(&v1).zip(&v2) {
                let c = f64::from(v) - m;
                p1 += c * a;
                p2 += c * b;
            }
            [p1 as f32, p2 as f32]
        })
        .collect();
    let explained = if total > 0.0 {
        [(l1 / total).clamp(0.0, 1.0), (l2 / total).clamp(0.0, 1.0)]
    } else {
        [0.0, 0.0]
    };
    Ok((projected, explained))
}

fn remove_component(v: &mut [f64], along: Option<&[f64]>) {
    if let Some(u) = along {
        let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
        for (x, y) in v.iter_mut().zip(u) {
            *x -= d * y;
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Top eigenvector (unit, sign-normalised) and eigenvalue of a symmetric PSD `dim x dim`
/// matrix by power iteration, kept orthogonal to `ortho`.
fn top_eigenvector(m: &[f64], dim: usize, ortho: Option<&[f64]>) -> (Vec<f64>, f64) {
    // A fixed start with no symmetry, so it is not orthogonal to the answer in practice.
    let mut v: Vec<f64> = (0..dim)
        .map(|i| 1.0 + (i as f64 * 0.618_033_988_749_895).fract())
        .collect();
    remove_component(&mut v, ortho);
    let mut nv = norm(&v);
    if nv < 1e-12 {
        // Start along the axis least aligned with `ortho`.
        let i = ortho.map_or(0, |u| {
            (0..dim)
                .min_by(|&a, &b| u[a].abs().total_cmp(&u[b].abs()))
                .unwrap_or(0)
        });
        v = vec![0.0; dim];
        v[i] = 1.0;
        remove_component(&mut v, ortho);
        nv = norm(&v);
    }
    for x in &mut v {
        *x /= nv;
    }
    let mut w = vec![0f64; dim];
    for _ in 0..POWER_MAX_ITER {
        for (a, wa) in w.iter_mut().enumerate() {
            *wa = m[a * dim..(a + 1) * dim]
                .iter()
                .zip(&v)
                .map(|(x, y)| x * y)
                .sum();
        }
        remove_component(&mut w, ortho);
        let nw = norm(&w);
        if nw < 1e-300 {
            break; // nothing left in this subspace: eigenvalue 0, any unit vector will do
        }
        let mut diff = 0f64;
        for (x, y) in v.iter_mut().zip(&w) {
            let next = y / nw;
            diff += (next - *x) * (next - *x);
            *x = next;
        }
        if diff.sqrt() < POWER_TOL {
            break;
        }
    }
    // Rayleigh quotient.
    let lambda: f64 = (0..dim)
        .map(|a| {
            v[a] * m[a * dim..(a + 1) * dim]
                .iter()
                .zip(&v)
                .map(|(x, y)| x * y)
                .sum::<f64>()
        })
        .sum();
    let lead = (0..dim)
        .max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()).then(b.cmp(&a)))
        .unwrap_or(0);
    if v[lead] < 0.0 {
        for x in &mut v {
            *x = -*x;
        }
    }
    (v, lambda.max(0.0))
}

/// A distinct colour for class `i` of `n`: evenly spaced hues, lightness cycling over three
/// levels so that neighbouring hues stay apart.
pub fn class_colour(i: usize, n: usize) -> RGBColor {
    let n = n.max(1);
    let hue = (i % n) as f64 / n as f64;
    let lightness = [0.45, 0.30, 0.60][i % 3];
    let saturation = [0.85, 0.75, 0.90][i % 3];
    let (r, g, b) = HSLColor(hue, saturation, lightness).rgb();
    RGBColor(r, g, b)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        t.push('\u{2026}');
        t
    }
}

/// 2-D PCA projection of `n x dim` embeddings (1500 x 900 PNG), one colour per class, the
/// class id at each class centroid and a legend of ids and names. At most
/// [`MAX_SCATTER_POINTS`] evenly spaced rows are drawn (the PCA and the centroids use all).
/// Labels past the end of `class_names` are shown as "class N".
pub fn embedding_projection(
    emb: &[f32],
    dim: usize,
    labels: &[u16],
    class_names: &[String],
    path: &Path,
) -> Result<(), PlotError> {
    let (proj, explained) =
        pca_2d(emb, dim).map_err(|e| input_error(path, format!("embeddings: {e}")))?;
    if labels.len() != proj.len() {
        return Err(input_error(
            path,
            format!(
                "{} labels for {} embeddings of dimension {dim}",
                labels.len(),
                proj.len()
            ),
        ));
    }
    let n = proj.len();
    let n_colours = labels
        .iter()
        .map(|&l| usize::from(l) + 1)
        .max()
        .unwrap_or(0)
        .max(class_names.len());
    let mut sums = vec![(0f64, 0f64, 0usize); n_colours];
    for (p, &l) in proj.iter().zip(labels) {
        let s = &mut sums[usize::from(l)];
        s.0 += f64::from(p[0]);
        s.1 += f64::from(p[1]);
        s.2 += 1;
    }
    let present: Vec<usize> = (0..n_colours).filter(|&c| sums[c].2 > 0).collect();
    let shown: Vec<usize> = if n <= MAX_SCATTER_POINTS {
        (0..n).collect()
    } else {
        (0..MAX_SCATTER_POINTS)
            .map(|i| i * n / MAX_SCATTER_POINTS)
            .collect()
    };
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in &proj {
        x_lo = x_lo.min(f64::from(p[0]));
        x_hi = x_hi.max(f64::from(p[0]));
        y_lo = y_lo.min(f64::from(p[1]));
        y_hi = y_hi.max(f64::from(p[1]));
    }
    let name_of = |c: usize| {
        class_names
            .get(c)
            .cloned()
            .unwrap_or_else(|| format!("class {c}"))
    };
    let title = format!(
        "Embeddings, PCA to 2-D: {} of {n} points shown, {} classes, dim {dim}",
        shown.len(),
        present.len()
    );

    render(path, (1500, 900), |root| {
        let body = root.titled(&title, bold(22))?;
        let (plot, legend) = body.split_horizontally(960);
        let mut chart = ChartBuilder::on(&plot)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(padded(x_lo, x_hi), padded(y_lo, y_hi))?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "PC1 ({:.1}% of the variance)",
                explained[0] * 100.0
            ))
            .y_desc(format!(
                "PC2 ({:.1}% of the variance)",
                explained[1] * 100.0
            ))
            .label_style(font(13))
            .axis_desc_style(font(15))
            .light_line_style(RGBColor(240, 240, 240))
            .draw()?;
        chart.draw_series(shown.iter().map(|&i| {
            let c = usize::from(labels[i]);
            Circle::new(
                (f64::from(proj[i][0]), f64::from(proj[i][1])),
                2,
                class_colour(c, n_colours).mix(0.75).filled(),
            )
        }))?;
        // Class ids at the centroids, on a white tag.
        chart.draw_series(present.iter().map(|&c| {
            let (sx, sy, k) = sums[c];
            let id = c.to_string();
            let half = 4 + 4 * id.len() as i32;
            EmptyElement::at((sx / k as f64, sy / k as f64))
                + Rectangle::new([(-half, -9), (half, 9)], WHITE.mix(0.8).filled())
                + Rectangle::new([(-half, -9), (half, 9)], class_colour(c, n_colours))
                + Text::new(
                    id,
                    (0, 0),
                    bold(13).pos(Pos::new(HPos::Center, VPos::Center)),
                )
        }))?;

        // Legend: a coloured square, the id and the (truncated) name, in columns.
        let (lw, lh) = legend.dim_in_pixel();
        let top = 20i32;
        let row_h = 18i32;
        let rows_max = ((lh as i32 - top - 10) / row_h).max(1) as usize;
        let cols = present.len().div_ceil(rows_max).max(1);
        let col_w = (lw as i32 - 10) / cols as i32;
        let max_chars = ((col_w - 40) / 7).max(4) as usize;
        for (k, &c) in present.iter().enumerate() {
            let x = 5 + (k / rows_max) as i32 * col_w;
            let y = top + (k % rows_max) as i32 * row_h;
            legend.draw(&Rectangle::new(
                [(x, y + 3), (x + 12, y + 15)],
                class_colour(c, n_colours).filled(),
            ))?;
            legend.draw(&Text::new(
                truncate(&format!("{c} {}", name_of(c)), max_chars),
                (x + 17, y + 2),
                font(13),
            ))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::icp::{EpsilonRow, IcpEvaluation};

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    /// Checks the file is a PNG of `size` with drawing on it; returns the decoded picture.
    fn check_png(path: &Path, size: (u32, u32)) -> image::RgbImage {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", path.display());
        assert!(
            bytes.len() > 10_000,
            "{} has only {} bytes",
            path.display(),
            bytes.len()
        );
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), size);
        let drawn = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let total = (size.0 * size.1) as usize;
        assert!(
            drawn > total / 50 && drawn < total * 9 / 10,
            "{drawn} of {total} pixels drawn"
        );
        // The title's text: dark pixels in the top band, so the font rendered.
        let dark_title = (0..size.0)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count();
        assert!(
            dark_title > 200,
            "title text missing ({dark_title} dark pixels)"
        );
        img
    }

    fn count_near(img: &image::RgbImage, colour: [u8; 3], tol: i32) -> usize {
        img.pixels()
            .filter(|p| {
                p.0.iter()
                    .zip(colour)
                    .all(|(&a, b)| (i32::from(a) - i32::from(b)).abs() <= tol)
            })
            .count()
    }

    fn evaluation() -> IcpEvaluation {
        let rows: Vec<EpsilonRow> = shared::icp::default_epsilon_grid()
            .into_iter()
            .map(|e| {
                let error_rate = (e + 0.01 * (e * 60.0).sin()).max(0.0);
                let singleton = (0.6 + 2.0 * e).min(0.97);
                let empty = (e - 0.05).max(0.0);
                let multiple = (1.0 - singleton - empty).max(0.0);
                EpsilonRow {
                    epsilon: e,
                    error_rate,
                    mean_set_size: 1.0 + multiple * 1.5 - empty,
                    empty,
                    singleton,
                    multiple,
                }
            })
            .collect();
        let dev: Vec<f64> = rows
            .iter()
            .map(|r| (r.error_rate - r.epsilon).abs())
            .collect();
        IcpEvaluation {
            n_samples: 12_630,
            n_classes: 43,
            ece: dev.iter().sum::<f64>() / dev.len() as f64,
            mce: dev.iter().copied().fold(0.0, f64::max),
            rows,
            per_class: vec![],
        }
    }

    #[test]
    fn calibration_plot_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.png");
        calibration_plot(&evaluation(), 390, &path).unwrap();
        let img = check_png(&path, WIDE);
        assert!(
            count_near(&img, [214, 39, 40], 10) > 200,
            "no error-rate curve"
        );
        assert!(
            count_near(&img, [44, 160, 44], 10) > 200,
            "no singleton curve"
        );
    }

    #[test]
    fn calibration_plot_rejects_bad_input_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.png");
        let mut eval = evaluation();
        let err = calibration_plot(&eval, 0, &path).unwrap_err().to_string();
        assert!(
            err.contains("calibration.png") && err.contains("tracks"),
            "{err}"
        );
        eval.rows.clear();
        let err = calibration_plot(&eval, 10, &path).unwrap_err().to_string();
        assert!(
            err.contains("calibration.png") && err.contains("no epsilon rows"),
            "{err}"
        );
        let mut eval = evaluation();
        eval.rows[3].error_rate = f64::NAN;
        let err = calibration_plot(&eval, 10, &path).unwrap_err();
        assert!(matches!(err, PlotError::Input { .. }), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("no")
            .join("such")
            .join("dir")
            .join("plot.png");
        let err = calibration_plot(&evaluation(), 100, &path).unwrap_err();
        assert!(matches!(err, PlotError::Write { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let history = [(1u64, "train_loss", 1.0)];
        let err = training_curves(&history, &path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    fn history() -> Vec<(u64, String, f64)> {
        let mut h = Vec::new();
        for step in (0..=2000u64).step_by(10) {
            let s = step as f64;
            h.push((
                step,
                "train_loss".to_string(),
                2.0 * (-s / 300.0).exp() + 0.002,
            ));
            h.push((step, "lr".to_string(), 1e-3 * (1.0 - s / 2500.0)));
            if step % 200 == 0 {
                h.push((
                    step,
                    "validation_loss".to_string(),
                    2.2 * (-s / 350.0).exp() + 0.01,
                ));
                h.push((
                    step,
                    "validation_nc_accuracy".to_string(),
                    0.98 - 0.9 * (-s / 400.0).exp(),
                ));
                h.push((
                    step,
                    "validation_silhouette".to_string(),
                    0.6 - 0.7 * (-s / 500.0).exp(),
                ));
            }
        }
        h.push((2010, "train_loss".to_string(), f64::NAN)); // skipped
        h
    }

    #[test]
    fn training_curves_write_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("training.png");
        training_curves(&history(), &path).unwrap();
        check_png(&path, WIDE);

        // Linear loss axis, &str names, no metric at all.
        let flat: Vec<(u64, &str, f64)> = (0..50)
            .map(|s| (s, "train_loss", 1.0 - s as f64 / 100.0))
            .collect();
        let path = dir.path().join("training_flat.png");
        training_curves(&flat, &path).unwrap();
        check_png(&path, WIDE);
    }

    #[test]
    fn training_curves_reject_empty_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("training.png");
        let empty: [(u64, &str, f64); 0] = [];
        let err = training_curves(&empty, &path).unwrap_err().to_string();
        assert!(
            err.contains("training.png") && err.contains("empty"),
            "{err}"
        );
        let nan = [(0u64, "train_loss", f64::NAN)];
        let err = training_curves(&nan, &path).unwrap_err().to_string();
        assert!(err.contains("no finite values"), "{err}");
    }

    /// Deterministic uniform values in [-1, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    #[test]
    fn pca_recovers_a_known_stretch() {
        let dim = 8;
        let s6 = 6f64.sqrt();
        let u = [1.0 / s6, 2.0 / s6, 0.0, -1.0 / s6, 0.0, 0.0, 0.0, 0.0];
        let w = [0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0, 0.6];
        let offset = [5.0, -3.0, 1.0, 0.0, 2.0, 0.0, 7.0, 1.0];
        let mut rng = Lcg(7);
        let n = 3000;
        let (mut a, mut b) = (vec![0f64; n], vec![0f64; n]);
        let mut emb = Vec::with_capacity(n * dim);
        for i in 0..n {
            a[i] = 10.0 * rng.next();
            b[i] = 3.0 * rng.next();
            for j in 0..dim {
                let noise = 0.05 * rng.next();
                emb.push((offset[j] + a[i] * u[j] + b[i] * w[j] + noise) as f32);
            }
        }
        let (proj, explained) = pca_2d(&emb, dim).unwrap();
        assert_eq!(proj.len(), n);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (ma, mb) = (mean(&a), mean(&b));
        // u's largest entry is positive, so PC1 = +u; w's largest is positive, so PC2 = +w.
        for i in 0..n {
            assert!(
                (f64::from(proj[i][0]) - (a[i] - ma)).abs() < 0.2,
                "row {i}: {:?}",
                proj[i]
            );
            assert!(
                (f64::from(proj[i][1]) - (b[i] - mb)).abs() < 0.2,
                "row {i}: {:?}",
                proj[i]
            );
        }
        let var = |v: &[f64], m: f64| {
            v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64
        };
        let (va, vb) = (var(&a, ma), var(&b, mb));
        let noise = dim as f64 * 0.05f64.powi(2) / 3.0;
        let total = va + vb + noise;
        assert!((explained[0] - va / total).abs() < 0.01, "{explained:?}");
        assert!((explained[1] - vb / total).abs() < 0.01, "{explained:?}");
        assert!(explained[0] > 0.85 && explained[0] + explained[1] > 0.99);
        // Deterministic.
        assert_eq!(pca_2d(&emb, dim).unwrap(), (proj, explained));
    }

    #[test]
    fn pca_edge_cases() {
        assert_eq!(pca_2d(&[], 4), Err(PcaError::Empty));
        assert_eq!(pca_2d(&[1.0], 0), Err(PcaError::ZeroDim));
        assert_eq!(
            pca_2d(&[1.0; 5], 2),
            Err(PcaError::Shape { len: 5, dim: 2 })
        );
        assert!(matches!(
            pca_2d(&[1.0, 2.0, f32::NAN, 0.0], 2),
            Err(PcaError::NonFinite {
                index: 2,
                row: 1,
                ..
            })
        ));
        // All rows equal: no variance, all at the origin.
        let (p, e) = pca_2d(&[3.0; 12], 3).unwrap();
        assert_eq!(p, vec![[0.0, 0.0]; 4]);
        assert_eq!(e, [0.0, 0.0]);
        // One dimension: the second coordinate is 0, PC1 takes all the variance.
        let (p, e) = pca_2d(&[1.0, 2.0, 3.0], 1).unwrap();
        assert_eq!(p, vec![[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]);
        assert!((e[0] - 1.0).abs() < 1e-12 && e[1] == 0.0);
    }

    fn clusters(n: usize, classes: usize, dim: usize) -> (Vec<f32>, Vec<u16>) {
        let mut rng = Lcg(11);
        let centres: Vec<f64> = (0..classes * dim).map(|_| 4.0 * rng.next()).collect();
        let mut emb = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i * 7 + i / 3) % classes;
            labels.push(c as u16);
            for j in 0..dim {
                emb.push((centres[c * dim + j] + 0.4 * rng.next()) as f32);
            }
        }
        (emb, labels)
    }

    #[test]
    fn embedding_projection_writes_png() {
        let (dim, classes) = (16, 43);
        let (emb, labels) = clusters(6000, classes, dim);
        let names: Vec<String> = (0..classes)
            .map(|c| match c {
                42 => "End of no passing by vehicles over 3.5 metric tons".to_string(),
                c => format!("Sign {c}"),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embeddings.png");
        embedding_projection(&emb, dim, &labels, &names, &path).unwrap();
        let img = check_png(&path, (1500, 900));
        let distinct = (0..classes)
            .filter(|&c| {
                let RGBColor(r, g, b) = class_colour(c, classes);
                count_near(&img, [r, g, b], 3) > 20
            })
            .count();
        assert!(distinct >= 40, "only {distinct} class colours visible");
    }

    #[test]
    fn embedding_projection_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embeddings.png");
        let names = vec!["a".to_string()];
        let err = embedding_projection(&[], 4, &[], &names, &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("embeddings.png") && err.contains("no embeddings"),
            "{err}"
        );
        let err = embedding_projection(&[0.0; 8], 4, &[0], &names, &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 labels for 2 embeddings"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn class_colours_are_distinct() {
        let colours: Vec<RGBColor> = (0..43).map(|c| class_colour(c, 43)).collect();
        for i in 0..43 {
            for j in i + 1..43 {
                let (a, b) = (colours[i], colours[j]);
                let d = (i32::from(a.0) - i32::from(b.0)).abs()
                    + (i32::from(a.1) - i32::from(b.1)).abs()
                    + (i32::from(a.2) - i32::from(b.2)).abs();
                assert!(d > 12, "classes {i} and {j}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn tiny_inputs_still_plot() {
        let dir = tempfile::tempdir().unwrap();
        // A three-epsilon grid, as the demo prints, and few tracks (a wide band).
        let mut eval = evaluation();
        eval.rows = [0.01, 0.05, 0.10]
            .iter()
            .map(|&e| EpsilonRow {
                epsilon: e,
                error_rate: e * 1.3,
                mean_set_size: 1.0,
                empty: e / 2.0,
                singleton: 1.0 - e,
                multiple: e / 2.0,
            })
            .collect();
        let path = dir.path().join("calibration_small.png");
        calibration_plot(&eval, 5, &path).unwrap();
        check_png(&path, WIDE);
        // One history point; only a learning rate.
        let path = dir.path().join("training_one.png");
        training_curves(&[(3u64, "train_loss", 0.5)], &path).unwrap();
        check_png(&path, WIDE);
        let path = dir.path().join("training_lr.png");
        training_curves(&[(0u64, "lr", 1e-3), (10, "lr", 5e-4)], &path).unwrap();
        check_png(&path, WIDE);
        // One embedding, a label past the class names.
        let path = dir.path().join("embeddings_one.png");
        embedding_projection(&[1.0, 2.0], 2, &[3], &[], &path).unwrap();
        check_png(&path, (1500, 900));
    }

    #[test]
    fn plots_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (emb, labels) = clusters(800, 12, 8);
        let names: Vec<String> = (0..12).map(|c| format!("class {c}")).collect();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        embedding_projection(&emb, 8, &labels, &names, &a).unwrap();
        embedding_projection(&emb, 8, &labels, &names, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }
}
