//! Which validated checkpoint a head-training run keeps.
//!
//! A run validates on the dev splits of the collections it trains on (the
//! *in-domain* mean) and, optionally, on collections it never trains on
//! (the *zero-shot* mean). Picking by the in-domain mean alone rewards the
//! head that specialises most; [`Selection::Robust`] keeps the checkpoint
//! with the best zero-shot mean among those within a margin of the best
//! in-domain mean — what a user whose documents look like neither
//! collection wants.

use serde::{Deserialize, Serialize};

use super::DevLog;

/// The rule that picks a run's kept checkpoint from its validations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum Selection {
    /// The best in-domain mean (the first of equals).
    InDomain,
    /// The best zero-shot mean among validations whose in-domain mean is at
    /// least the run's best minus `margin` (nDCG@10, e.g. 0.01 = 1 point).
    Robust { margin: f64 },
}

impl Selection {
    /// Checks the margin; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Robust { margin } if !(margin.is_finite() && *margin >= 0.0) => {
                Err(format!("--select-margin must be ≥ 0, not {margin}"))
            }
            _ => Ok(()),
        }
    }

    /// The position in `dev` of the validation this rule keeps (`None`
    /// for no validations). Without zero-shot scores the robust rule is
    /// the in-domain one.
    pub fn choose(&self, dev: &[DevLog]) -> Option<usize> {
        let in_domain = |d: &DevLog| d.in_domain.unwrap_or(d.ndcg10);
        let first_best = |score: &dyn Fn(&DevLog) -> f64, keep: &dyn Fn(&DevLog) -> bool| {
            let mut best: Option<usize> = None;
            for (i, d) in dev.iter().enumerate() {
                if keep(d) && best.is_none_or(|b| score(d) > score(&dev[b])) {
                    best = Some(i);
                }
            }
            best
        };
        let by_in_domain = first_best(&in_domain, &|_| true);
        match self {
            Self::InDomain => by_in_domain,
            Self::Robust { margin } => {
                if dev.iter().any(|d| d.zero_shot.is_none()) {
                    return by_in_domain;
                }
                let floor = in_domain(&dev[by_in_domain?]) - margin;
                first_best(
                    &|d: &DevLog| d.zero_shot.unwrap_or(f64::NEG_INFINITY),
                    &|d| in_domain(d) >= floor - 1e-12,
                )
            }
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = String;
    /// `in-domain` or `robust` (margin 0.01; the caller may replace it).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "in-domain" => Ok(Self::InDomain),
            "robust" => Ok(Self::Robust { margin: 0.01 }),
            _ => Err(format!(
                "unknown selection rule {s:?} (in-domain or robust)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(step: usize, in_domain: f64, zero_shot: Option<f64>) -> DevLog {
        DevLog {
            step,
            ndcg10: in_domain,
            in_domain: Some(in_domain),
            zero_shot,
            per_source: Vec::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn robust_takes_the_best_zero_shot_within_the_margin_of_the_best_in_domain() {
        let logs = [
            dev(100, 0.500, Some(0.400)),
            dev(200, 0.505, Some(0.390)),
            dev(300, 0.512, Some(0.300)),
            dev(400, 0.510, Some(0.350)),
        ];
        assert_eq!(Selection::InDomain.choose(&logs), Some(2));
        // Floor 0.502: step 100 is out although it led while it was best.
        assert_eq!(Selection::Robust { margin: 0.01 }.choose(&logs), Some(1));
        assert_eq!(Selection::Robust { margin: 0.0 }.choose(&logs), Some(2));
        assert_eq!(Selection::Robust { margin: 1.0 }.choose(&logs), Some(0));
        assert_eq!(Selection::Robust { margin: 0.01 }.choose(&[]), None);
    }

    #[test]
    fn without_zero_shot_scores_robust_is_in_domain() {
        let logs = [dev(1, 0.3, None), dev(2, 0.4, None), dev(3, 0.4, None)];
        assert_eq!(Selection::Robust { margin: 0.5 }.choose(&logs), Some(1));
        assert!(Selection::Robust { margin: -1.0 }.validate().is_err());
        assert_eq!("robust".parse(), Ok(Selection::Robust { margin: 0.01 }));
        assert!("best".parse::<Selection>().is_err());
    }
}
