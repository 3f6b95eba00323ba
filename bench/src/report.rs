//! The results table (Markdown and JSON) and the chart of ratios.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::workloads::Row;

#[derive(Serialize)]
pub struct Results {
    pub quick: bool,
    pub machine: String,
    pub runs: Vec<(String, Vec<Row>)>,
}

/// One workload compared across daemons.
struct Line<'a> {
    workload: &'a str,
    reference: Option<&'a Row>,
    ours: Option<&'a Row>,
}

impl Line<'_> {
    /// Ours relative to the reference, oriented so that higher is better.
    fn ratio(&self) -> Option<f64> {
        let r = self.reference?.value?;
        let o = self.ours?.value?;
        let hib = self.ours?.higher_is_better;
        if r <= 0.0 || o <= 0.0 {
            return None;
        }
        Some(if hib { o / r } else { r / o })
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(String::new(), |k| format!(", {} GiB RAM", k / 1024 / 1024));
    format!("{cpu}, {cores} cores{mem}")
}

fn fmt(row: Option<&Row>) -> String {
    match row {
        None => "-".into(),
        Some(r) => match (r.value, &r.error) {
            (Some(v), _) if v >= 100.0 => format!("{v:.0}"),
            (Some(v), _) => format!("{v:.2}"),
            (None, Some(_)) => "FAILED".into(),
            (None, None) => "-".into(),
        },
    }
}

impl Results {
    pub fn new(quick: bool) -> Self {
        Results {
            quick,
            machine: machine(),
            runs: Vec::new(),
        }
    }

    pub fn add(&mut self, target: &str, rows: Vec<Row>) {
        self.runs.push((target.to_owned(), rows));
    }

    fn rows_of(&self, target: &str) -> Option<&Vec<Row>> {
        self.runs.iter().find(|(t, _)| t == target).map(|(_, r)| r)
    }

    fn lines(&self) -> Vec<Line<'_>> {
        let mut names: Vec<&str> = Vec::new();
        for (_, rows) in &self.runs {
            for r in rows {
                if !names.contains(&r.workload.as_str()) {
                    names.push(&r.workload);
                }
            }
        }
        let find = |t: &str, n: &str| {
            self.rows_of(t)
                .and_then(|rows| rows.iter().find(|r| r.workload == n))
        };
        names
            .into_iter()
            .map(|n| Line {
                workload: n,
                reference: find("reference", n),
                ours: find("ours", n),
            })
            .collect()
    }

    pub fn any_failed(&self) -> bool {
        self.runs
            .iter()
            .any(|(_, rows)| rows.iter().any(|r| r.error.is_some()))
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "Machine: {}. Mode: {}.\n\n",
            self.machine,
            if self.quick { "quick" } else { "full" }
        ));
        s.push_str("| workload | reference | ours | ratio (higher is better) | notes |\n");
        s.push_str("|---|---:|---:|---:|---|\n");
        for l in self.lines() {
            let ratio = l.ratio().map_or("-".into(), |r| format!("{r:.2}x"));
            let mut notes = Vec::new();
            for (who, row) in [("reference", l.reference), ("ours", l.ours)] {
                if let Some(r) = row {
                    if let Some(e) = &r.error {
                        notes.push(format!("{who} failed: {}", e.replace('\n', " ")));
                    } else if !r.note.is_empty() {
                        notes.push(format!("{who}: {}", r.note));
                    }
                }
            }
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                l.workload,
                fmt(l.reference),
                fmt(l.ours),
                ratio,
                notes.join("; ")
            ));
        }
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        self.chart(&dir.join("ratios.svg"))?;
        Ok(())
    }

    /// A bar per workload: ours relative to the reference, 1.0 marked.
    fn chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let lines: Vec<(String, f64)> = self
            .lines()
            .iter()
            .filter_map(|l| l.ratio().map(|r| (l.workload.to_owned(), r)))
            .collect();
        let root =
            SVGBackend::new(path, (900, 60 + 40 * lines.len().max(1) as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = lines.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.15;
        let n = lines.len().max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "ctdb-rs relative to CTDB 4.17 (higher is better)",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(330)
            .build_cartesian_2d(0.0..max, 0..n)?;
        let labels: Vec<String> = lines.iter().map(|(n, _)| n.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(lines.len().max(1))
            .y_label_formatter(&|i| labels.get(*i as usize).cloned().unwrap_or_default())
            .x_desc("ratio")
            .draw()?;
        chart.draw_series(lines.iter().enumerate().map(|(i, (_, r))| {
            let color = if *r >= 1.0 {
                GREEN.mix(0.7)
            } else {
                RED.mix(0.7)
            };
            Rectangle::new([(0.0, i as i32), (*r, i as i32 + 1)], color.filled())
        }))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(1.0, 0), (1.0, n)],
            BLACK,
        )))?;
        root.present()?;
        Ok(())
    }
}
