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

    /// Each workload's ratio (ours relative to the reference, higher is
    /// better), where both have a figure.
    fn ratios(&self) -> Vec<(&str, Option<f64>)> {
        self.lines()
            .iter()
            .map(|l| (l.workload, l.ratio()))
            .collect()
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

/// The ratios of several rounds side by side: per workload, each round's
/// ratio, their range and median (rounds without a ratio left out of
/// both).
pub fn spread_markdown(rounds: &[Results]) -> String {
    let per_round: Vec<Vec<(&str, Option<f64>)>> = rounds.iter().map(Results::ratios).collect();
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in per_round.iter().flatten() {
        if !names.contains(n) {
            names.push(n);
        }
    }
    let mut s = format!(
        "Machine: {}. Mode: {}. {} rounds, the reference's and our clusters taking turns; \
         each round's figures in round-K/results.md.\n\n",
        rounds.first().map_or("", |r| r.machine.as_str()),
        if rounds.first().is_some_and(|r| r.quick) {
            "quick"
        } else {
            "full"
        },
        rounds.len()
    );
    s.push_str("| workload |");
    for k in 1..=rounds.len() {
        s.push_str(&format!(" round {k} |"));
    }
    s.push_str(" range | median |\n|---|");
    for _ in 0..rounds.len() + 2 {
        s.push_str("---:|");
    }
    s.push('\n');
    for name in names {
        let ratios: Vec<Option<f64>> = per_round
            .iter()
            .map(|r| r.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v))
            .collect();
        s.push_str(&format!("| {name} |"));
        for r in &ratios {
            s.push_str(&match r {
                Some(v) => format!(" {v:.2}x |"),
                None => " - |".into(),
            });
        }
        let mut known: Vec<f64> = ratios.into_iter().flatten().collect();
        known.sort_by(f64::total_cmp);
        match (known.first(), known.last()) {
            (Some(lo), Some(hi)) => {
                let mid = known.len() / 2;
                let median = if known.len() % 2 == 1 {
                    known[mid]
                } else {
                    (known[mid - 1] + known[mid]) / 2.0
                };
                s.push_str(&format!(" {lo:.2}-{hi:.2}x | {median:.2}x |\n"));
            }
            _ => s.push_str(" - | - |\n"),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::Row;

    fn round(reference: f64, ours: f64) -> Results {
        let mut r = Results::new(true);
        r.add(
            "reference",
            vec![Row::ok("ring", "ops/s", true, reference, String::new())],
        );
        r.add(
            "ours",
            vec![Row::ok("ring", "ops/s", true, ours, String::new())],
        );
        r
    }

    #[test]
    fn spread_lists_each_rounds_ratio_with_range_and_median() {
        let md = spread_markdown(&[round(100.0, 80.0), round(100.0, 120.0), round(50.0, 50.0)]);
        let line = md.lines().find(|l| l.starts_with("| ring |")).unwrap();
        assert_eq!(
            line,
            "| ring | 0.80x | 1.20x | 1.00x | 0.80-1.20x | 1.00x |"
        );
    }
}
