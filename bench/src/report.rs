//! The results: every figure (each round's value and their median), the CPU seconds each
//! component spent on it, the goals and how they came out, written as JSON and as a markdown
//! table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::procs::CpuSeconds;
use crate::stats::median;

/// One measured variant of a scenario.
#[derive(Debug, Serialize, Clone)]
pub struct Figure {
    pub scenario: String,
    pub variant: String,
    pub unit: String,
    /// One value per round, in the order they ran.
    pub rounds: Vec<f64>,
    pub median: f64,
    /// CPU seconds per component over all of this variant's rounds.
    pub cpu_seconds: CpuSeconds,
    /// Work items (jobs, requests, messages) over all rounds, for CPU per item.
    pub work_total: u64,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: f64,
    pub target: f64,
    /// `>=` or `<=`.
    pub comparison: String,
    pub met: bool,
    pub detail: String,
}

#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub meta: BTreeMap<String, String>,
    pub figures: Vec<Figure>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

impl Report {
    /// Adds (or extends) the figure of `scenario`/`variant` with one round's value and CPU.
    pub fn record(
        &mut self,
        scenario: &str,
        variant: &str,
        unit: &str,
        value: f64,
        cpu: &CpuSeconds,
        work: u64,
    ) {
        let figure = match self
            .figures
            .iter_mut()
            .find(|f| f.scenario == scenario && f.variant == variant)
        {
            Some(f) => f,
            None => {
                self.figures.push(Figure {
                    scenario: scenario.into(),
                    variant: variant.into(),
                    unit: unit.into(),
                    rounds: Vec::new(),
                    median: 0.0,
                    cpu_seconds: CpuSeconds::new(),
                    work_total: 0,
                });
                self.figures.last_mut().expect("just pushed")
            }
        };
        figure.rounds.push(round3(value));
        figure.work_total += work;
        figure.median = round3(median(&figure.rounds));
        for (component, secs) in cpu {
            *figure.cpu_seconds.entry(component.clone()).or_default() += secs;
        }
        for secs in figure.cpu_seconds.values_mut() {
            *secs = (*secs * 100.0).round() / 100.0;
        }
    }

    /// CPU microseconds per work item, by component (what a figure cost, whatever the load).
    pub fn cpu_per_item(figure: &Figure) -> BTreeMap<String, f64> {
        figure
            .cpu_seconds
            .iter()
            .filter(|(_, s)| **s > 0.0 && figure.work_total > 0)
            .map(|(c, s)| (c.clone(), (s * 1e6 / figure.work_total as f64).round()))
            .collect()
    }

    pub fn rounds_of(&self, scenario: &str, variant: &str) -> Option<&[f64]> {
        self.figures
            .iter()
            .find(|f| f.scenario == scenario && f.variant == variant)
            .map(|f| f.rounds.as_slice())
    }

    /// The median over rounds of `f(a[i], b[i], …)`, pairing the rounds that ran next to each
    /// other (so under the same load on a shared machine); `None` if a figure is missing.
    pub fn paired(&self, figures: &[(&str, &str)], f: impl Fn(&[f64]) -> f64) -> Option<f64> {
        let rounds: Vec<&[f64]> = figures
            .iter()
            .map(|(s, v)| self.rounds_of(s, v))
            .collect::<Option<_>>()?;
        let n = rounds.iter().map(|r| r.len()).min()?;
        let values: Vec<f64> = (0..n)
            .map(|i| f(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect();
        (!values.is_empty()).then(|| median(&values))
    }

    pub fn median_of(&self, scenario: &str, variant: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.scenario == scenario && f.variant == variant)
            .map(|f| f.median)
    }

    /// A goal `measured >= target` (or `<=`); skipped when a figure is missing.
    pub fn goal(
        &mut self,
        goal: &str,
        measured: Option<f64>,
        target: Option<f64>,
        at_least: bool,
        detail: String,
    ) {
        let (Some(measured), Some(target)) = (measured, target) else {
            self.notes
                .push(format!("goal not evaluated (a figure is missing): {goal}"));
            return;
        };
        self.goals.push(Goal {
            goal: goal.into(),
            measured: round3(measured),
            target: round3(target),
            comparison: if at_least { ">=" } else { "<=" }.into(),
            met: if at_least {
                measured >= target
            } else {
                measured <= target
            },
            detail,
        });
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("# Benchmark results\n\n");
        for (k, v) in &self.meta {
            let _ = writeln!(out, "- **{k}**: {v}");
        }
        out.push_str(
            "\n## Goals\n\n| goal | measured | target | met | how |\n|---|---:|---:|:---:|---|\n",
        );
        for g in &self.goals {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {} |",
                g.goal,
                g.measured,
                g.comparison,
                g.target,
                if g.met { "yes" } else { "**no**" },
                g.detail
            );
        }
        out.push_str("\n## Figures (median of the rounds; rounds in the order they ran, alternating with their baselines)\n\n");
        out.push_str("| scenario | variant | median | unit | rounds | CPU µs per job/request/message, by component |\n|---|---|---:|---|---|---|\n");
        for f in &self.figures {
            let rounds: Vec<String> = f.rounds.iter().map(|r| format!("{r}")).collect();
            let per_item = Self::cpu_per_item(f);
            let total: f64 = per_item.values().sum();
            let mut cpu: Vec<String> = per_item.iter().map(|(c, us)| format!("{c} {us}")).collect();
            if cpu.len() > 1 {
                cpu.push(format!("**total {total}**"));
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                f.scenario,
                f.variant,
                f.median,
                f.unit,
                rounds.join(", "),
                cpu.join(", ")
            );
        }
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_take_the_median_of_the_rounds() {
        let mut r = Report::default();
        let none = CpuSeconds::new();
        for (a, b) in [(10.0, 20.0), (30.0, 30.0), (5.0, 100.0)] {
            r.record("s", "a", "x", a, &none, 1);
            r.record("s", "b", "x", b, &none, 1);
        }
        // Per round 0.5, 1.0, 0.05: median 0.5 (the ratio of the medians would be 10/30).
        assert_eq!(
            r.paired(&[("s", "a"), ("s", "b")], |x| x[0] / x[1]),
            Some(0.5)
        );
        assert_eq!(r.paired(&[("s", "a"), ("s", "missing")], |x| x[0]), None);
        assert_eq!(r.median_of("s", "a"), Some(10.0));
        let f = &r.figures[0];
        assert_eq!(f.work_total, 3);
    }
}
