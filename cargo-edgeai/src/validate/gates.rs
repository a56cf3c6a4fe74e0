//! Production gates: thresholds a candidate must meet, and their evaluation.
//!
//! Gates come from the target manifest's `[gates]` table and from
//! `[package.metadata.edgeai.gates]`; a key set in the project overrides the target's, because
//! the project knows its own quality bar while the target only knows the device.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Thresholds; every one is optional. Keys are snake_case (`max_kld`); the project table may
/// also spell them in kebab-case like the rest of `[package.metadata.edgeai]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Highest mean KL divergence (nats) of the candidate from the reference.
    #[serde(
        default,
        deserialize_with = "number",
        alias = "max-kld",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_kld: Option<f64>,
    /// Highest PPL(candidate) / PPL(reference).
    #[serde(
        default,
        deserialize_with = "number",
        alias = "max-ppl-ratio",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ppl_ratio: Option<f64>,
    /// Lowest fraction (0..=1) of tokens whose most likely next token is the reference's.
    #[serde(
        default,
        deserialize_with = "number",
        alias = "min-top1",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_top1: Option<f64>,
    /// Lowest decode speed measured on the host (tokens/s).
    #[serde(
        default,
        deserialize_with = "number",
        alias = "min-decode-tokens-per-s",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_decode_tokens_per_s: Option<f64>,
    /// Highest peak resident memory measured on the host (MiB).
    #[serde(
        default,
        deserialize_with = "number",
        alias = "max-memory-mb",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_memory_mb: Option<f64>,
    /// Lowest cosine similarity of the candidate's outputs to the reference's (ONNX Runtime
    /// validation: the mean-pooled embedding's mean cosine for text encoders, else the lowest
    /// per-output mean cosine).
    #[serde(
        default,
        deserialize_with = "number",
        alias = "min-cosine",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_cosine: Option<f64>,
    /// Highest p95 latency of one inference of the candidate on the host (ms; ONNX Runtime).
    #[serde(
        default,
        deserialize_with = "number",
        alias = "max-latency-p95-ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_latency_p95_ms: Option<f64>,
}

/// A threshold written as an integer (`max_memory_mb = 2048`) or a float.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
    }
    Ok(Option::<Num>::deserialize(d)?.map(|n| match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }))
}

impl Gates {
    /// `self` with every key that `over` sets replaced by `over`'s value.
    pub fn overridden_by(&self, over: &Gates) -> Gates {
        Gates {
            max_kld: over.max_kld.or(self.max_kld),
            max_ppl_ratio: over.max_ppl_ratio.or(self.max_ppl_ratio),
            min_top1: over.min_top1.or(self.min_top1),
            min_decode_tokens_per_s: over
                .min_decode_tokens_per_s
                .or(self.min_decode_tokens_per_s),
            max_memory_mb: over.max_memory_mb.or(self.max_memory_mb),
            min_cosine: over.min_cosine.or(self.min_cosine),
            max_latency_p95_ms: over.max_latency_p95_ms.or(self.max_latency_p95_ms),
        }
    }

    /// Reject values that can never be meant: negative or non-finite thresholds, and a
    /// `min_top1` above 1 (someone wrote a percentage; it would fail every model).
    pub fn check(&self, origin: &str) -> Result<()> {
        let all = [
            ("max_kld", self.max_kld),
            ("max_ppl_ratio", self.max_ppl_ratio),
            ("min_top1", self.min_top1),
            ("min_decode_tokens_per_s", self.min_decode_tokens_per_s),
            ("max_memory_mb", self.max_memory_mb),
            ("min_cosine", self.min_cosine),
            ("max_latency_p95_ms", self.max_latency_p95_ms),
        ];
        for (name, value) in all {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(Error::Usage {
                        message: format!(
                            "{origin}: gate {name} = {v} is not a non-negative number"
                        ),
                        help: "set each gate to a finite, non-negative threshold".into(),
                    });
                }
            }
        }
        if let Some(t) = self.min_top1 {
            if t > 1.0 {
                return Err(Error::Usage {
                    message: format!("{origin}: gate min_top1 = {t} is above 1"),
                    help: "min_top1 is a fraction of tokens, e.g. 0.85 for 85 %".into(),
                });
            }
        }
        if let Some(t) = self.min_cosine {
            if t > 1.0 {
                return Err(Error::Usage {
                    message: format!("{origin}: gate min_cosine = {t} is above 1"),
                    help: "min_cosine is a cosine similarity, at most 1, e.g. 0.99".into(),
                });
            }
        }
        Ok(())
    }

    /// Parse the untyped `[package.metadata.edgeai.gates]` table.
    pub fn from_table(table: &toml::Table, origin: &str) -> Result<Gates> {
        let gates: Gates =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| Error::Usage {
                    message: format!("{origin}: [gates]: {}", e.message()),
                    help: "gates are max_kld, max_ppl_ratio, min_top1, min_decode_tokens_per_s, max_memory_mb, min_cosine and max_latency_p95_ms, each a number".into(),
                })?;
        gates.check(origin)?;
        Ok(gates)
    }
}

/// Whether a lower or a higher measurement is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Passes when measured <= threshold.
    AtMost,
    /// Passes when measured >= threshold.
    AtLeast,
}

/// The outcome of one gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    /// Gate name as written in the manifest (`max_kld`), or `target_memory_budget`.
    pub name: String,
    /// The measured (or, for the target budget, estimated) value; `None` when not measured.
    pub measured: Option<f64>,
    pub threshold: f64,
    pub direction: Direction,
    /// Unit of `measured` and `threshold`.
    pub unit: String,
    pub passed: bool,
    /// Where the value came from.
    pub basis: String,
}

impl GateResult {
    /// Judge `measured` against `threshold`. An unmeasured value fails: a gate that was asked
    /// for must not pass silently because its measurement was skipped.
    pub fn judge(
        name: &str,
        measured: Option<f64>,
        threshold: f64,
        direction: Direction,
        unit: &str,
        basis: &str,
    ) -> GateResult {
        let passed = match (measured, direction) {
            (Some(m), Direction::AtMost) => m <= threshold,
            (Some(m), Direction::AtLeast) => m >= threshold,
            (None, _) => false,
        };
        GateResult {
            name: name.into(),
            measured,
            threshold,
            direction,
            unit: unit.into(),
            passed,
            basis: basis.into(),
        }
    }

    /// One line naming the gate, the measured value and the threshold.
    pub fn describe(&self) -> String {
        let op = match (self.direction, self.passed) {
            (Direction::AtMost, true) => "<=",
            (Direction::AtMost, false) => ">",
            (Direction::AtLeast, true) => ">=",
            (Direction::AtLeast, false) => "<",
        };
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        match self.measured {
            Some(m) => format!(
                "{}: measured {}{unit} {op} threshold {}{unit}",
                self.name,
                fmt_num(m),
                fmt_num(self.threshold)
            ),
            None => format!(
                "{}: not measured ({}), threshold {}{unit}",
                self.name,
                self.basis,
                fmt_num(self.threshold)
            ),
        }
    }
}

/// Numbers with enough digits to compare against a threshold by eye.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.001 && v.abs() < 1e6) {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        // A threshold such as 0.99999999 must not read as `1`: when six decimals lose the
        // value and its shortest exact form is still short, show that form.
        let exact = v.to_string();
        if s.parse::<f64>() != Ok(v) && exact.len() <= 12 {
            return exact;
        }
        s.to_string()
    } else {
        format!("{v:.4e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_keep_their_digits() {
        assert_eq!(fmt_num(0.99999999), "0.99999999");
        assert_eq!(fmt_num(0.99), "0.99");
        assert_eq!(fmt_num(0.998471234567), "0.998471");
        assert_eq!(fmt_num(1e-4), "1.0000e-4");
    }

    #[test]
    fn project_overrides_target_and_percentages_are_refused() {
        let target = Gates {
            max_kld: Some(0.1),
            min_top1: Some(0.8),
            ..Gates::default()
        };
        let project = Gates {
            max_kld: Some(0.05),
            ..Gates::default()
        };
        let g = target.overridden_by(&project);
        assert_eq!(g.max_kld, Some(0.05));
        assert_eq!(g.min_top1, Some(0.8));
        let table: toml::Table = toml::from_str("min-top1 = 85.0").unwrap();
        assert!(Gates::from_table(&table, "Cargo.toml").is_err());
        let table: toml::Table = toml::from_str("max_kdl = 0.1").unwrap();
        let err = Gates::from_table(&table, "Cargo.toml").unwrap_err();
        assert!(err.to_string().contains("max_kdl"), "{err}");
    }

    #[test]
    fn judging_names_gate_measured_and_threshold() {
        let r = GateResult::judge("max_kld", Some(0.3), 0.1, Direction::AtMost, "nats", "x");
        assert!(!r.passed);
        assert_eq!(
            r.describe(),
            "max_kld: measured 0.3 nats > threshold 0.1 nats"
        );
        let r = GateResult::judge("min_top1", None, 0.9, Direction::AtLeast, "", "skipped");
        assert!(!r.passed);
    }
}
