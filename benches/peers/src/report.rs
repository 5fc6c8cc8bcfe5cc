//! The markdown table and the SVG chart of a run.

use std::path::Path;

use plotters::prelude::*;

use crate::Row;

/// The machine, disk and date, for the table's heading.
pub fn machine(dir: &Path, cold: bool) -> String {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = run("sh", &["-c", "awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo"]);
    let fs = run("df", &["--output=fstype", &dir.display().to_string()]).lines().last().unwrap_or("").to_string();
    let date = run("date", &["-u", "+%Y-%m-%d"]);
    let kernel = run("uname", &["-sr"]);
    let cache =
        if cold { "page cache dropped before each cold reopen" } else { "no cold reopen (not root: could not drop the page cache)" };
    // The file system's type, not the run's temporary path: the heading is published with the results.
    format!("{date}: {cpus} cores, {memory}, {fs}, {kernel}; {cache}")
}

fn rate(r: Option<crate::Rate>) -> String {
    r.map_or("-".into(), |r| human(r.per_second))
}

/// " [1.2-1.4 M]": the slowest and fastest run of a column, when there were several.
fn range(row: &Row, column: &str) -> String {
    match row.ranges.get(column) {
        Some(&(low, high)) if low != high => format!(" [{}-{}]", short(low), short(high)),
        _ => String::new(),
    }
}

/// "1.23M", "4.5k": a rate without its unit, for the ranges.
fn short(per_second: f64) -> String {
    scaled(per_second, "")
}

/// A rate scaled to M or k, with `separator` between the number and the scale.
fn scaled(per_second: f64, separator: &str) -> String {
    if per_second >= 1e6 {
        format!("{:.2}{separator}M", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}{separator}k", per_second / 1e3)
    } else {
        format!("{per_second:.0}")
    }
}

/// "1.23 (1.10-1.50)": the median and the range of the runs.
fn spread(s: Option<crate::Spread>) -> String {
    let ms = |v: f64| if v >= 100.0 { format!("{v:.0}") } else if v >= 1.0 { format!("{v:.2}") } else { format!("{v:.3}") };
    s.map_or("-".into(), |s| format!("{} ({}-{})", ms(s.median_ms), ms(s.min_ms), ms(s.max_ms)))
}

fn human(per_second: f64) -> String {
    if per_second >= 1e3 {
        format!("{}/s", scaled(per_second, " "))
    } else {
        format!("{per_second:.0} /s")
    }
}

/// One table, engines as rows; ratios to the raw file baseline of the same run in parentheses.
pub fn markdown(rows: &[Row], machine: &str, scale: u64) -> String {
    let raw = rows.iter().find(|r| r.engine == "raw file");
    let ratio = |value: Option<f64>, base: Option<f64>| match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!(" ({:.2}x)", v / b),
        _ => String::new(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "Peer comparison, {machine}. Command: `cargo run --release --manifest-path benches/peers/Cargo.toml{}`.\n\
         Ratios in parentheses are to the raw file baseline of the same run (`BufWriter` + crc32 without fsync; \
         `pwrite` + `fdatasync` when durable). Each figure is the median of 3 runs, with the slowest and fastest \
         run in brackets; reopen times in ms: median (fastest-slowest) of 15 reopens.\n\n",
        if scale > 1 { " -- --quick" } else { "" }
    ));
    let reopen_size = if scale > 1 { "64 MiB" } else { "1 GiB" };
    out.push_str(&format!(
        "| engine | durable means | the engine's own fsync calls for 100 durable appends (strace) | 100 B appends, no fsync | 1 KiB appends, no fsync | durable appends, 1 thread | durable p50 / p99 | durable, 4 threads | read back, ack every 1,000 | reopen {reopen_size} + first read, cold (ms) | same, warm (ms) |\n",
    ));
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let base = |f: fn(&Row) -> Option<f64>| raw.and_then(f);
        let durable = row.durable.map(|d| d.rate.per_second);
        out.push_str(&format!(
            "| {} | {} | {} | {}{}{} | {}{}{} | {}{}{} | {} | {}{}{} | {}{}{} | {} | {} |\n",
            row.engine,
            row.durable_mode,
            row.sync_calls.map_or("strace missing".into(), |n| n.to_string()),
            rate(row.append_100),
            ratio(row.append_100.map(|r| r.per_second), base(|r| r.append_100.map(|r| r.per_second))),
            range(row, "append_100"),
            rate(row.append_1k),
            ratio(row.append_1k.map(|r| r.per_second), base(|r| r.append_1k.map(|r| r.per_second))),
            range(row, "append_1k"),
            durable.map_or("-".into(), human),
            ratio(durable, base(|r| r.durable.map(|d| d.rate.per_second))),
            range(row, "durable"),
            row.durable.map_or("-".into(), |d| format!("{:.0} / {:.0} µs", d.p50_us, d.p99_us)),
            rate(row.durable_4),
            ratio(row.durable_4.map(|r| r.per_second), base(|r| r.durable_4.map(|r| r.per_second))),
            range(row, "durable_4"),
            rate(row.read_back),
            ratio(row.read_back.map(|r| r.per_second), base(|r| r.read_back.map(|r| r.per_second))),
            range(row, "read_back"),
            spread(row.reopen_cold),
            spread(row.reopen_warm),
        ));
    }
    let notes: Vec<String> =
        rows.iter().flat_map(|r| r.notes.iter().map(move |n| format!("- {}: {n}", r.engine))).collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

/// Two panels: throughput of each workload per engine (log scale), and durable latency p50/p99.
pub fn chart(rows: &[Row], path: &Path, machine: &str) {
    let root = SVGBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let (top, bottom) = root.split_vertically(560);
    let series: [(&str, fn(&Row) -> Option<f64>, RGBColor); 5] = [
        ("100 B, no fsync", |r| r.append_100.map(|x| x.per_second), RGBColor(31, 119, 180)),
        ("1 KiB, no fsync", |r| r.append_1k.map(|x| x.per_second), RGBColor(255, 127, 14)),
        ("durable, 1 thread", |r| r.durable.map(|x| x.rate.per_second), RGBColor(44, 160, 44)),
        ("durable, 4 threads", |r| r.durable_4.map(|x| x.per_second), RGBColor(214, 39, 40)),
        ("read back", |r| r.read_back.map(|x| x.per_second), RGBColor(148, 103, 189)),
    ];
    bars(&top, rows, &series, &format!("messages per second (log scale) -- {machine}"), "msgs/s");
    let latency: [(&str, fn(&Row) -> Option<f64>, RGBColor); 2] = [
        ("durable p50 (µs)", |r| r.durable.map(|x| x.p50_us), RGBColor(44, 160, 44)),
        ("durable p99 (µs)", |r| r.durable.map(|x| x.p99_us), RGBColor(140, 86, 75)),
    ];
    bars(&bottom, rows, &latency, "durable append latency, 100 B, one thread (log scale)", "µs");
    root.present().unwrap();
}

/// 1500 as "1.5k", 2e6 as "2M": axis labels that read at a glance.
fn axis_label(value: f64) -> String {
    let (scaled, suffix) = match value {
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let digits = if scaled >= 10.0 || scaled.fract().abs() < 1e-9 { 0 } else { 1 };
    format!("{scaled:.digits$}{suffix}")
}

type Series<'a> = (&'a str, fn(&Row) -> Option<f64>, RGBColor);

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[Row],
    series: &[Series],
    title: &str,
    unit: &str,
) {
    let values = rows.iter().flat_map(|r| series.iter().filter_map(move |s| (s.1)(r)));
    // Headroom above the tallest bar for the legend.
    let max = values.clone().fold(1.0f64, f64::max) * 40.0;
    let min = values.fold(f64::MAX, f64::min).max(0.1) / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..rows.len() as f64, (min..max).log_scale())
        .unwrap();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                rows.get(i).map_or(String::new(), |r| r.engine.to_string())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| axis_label(*v))
        .y_desc(unit)
        .draw()
        .unwrap();
    let width = 0.8 / series.len() as f64;
    for (k, (name, value, color)) in series.iter().enumerate() {
        let color = *color;
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, row)| {
                let v = value(row)?;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new([(x0, min), (x0 + width * 0.9, v)], color.filled()))
            }))
            .unwrap()
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle) // in the headroom, clear of the bars
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .unwrap();
}
