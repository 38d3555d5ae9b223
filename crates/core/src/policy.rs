//! What a pipeline does with records that fail: the `on_error` policy and the error budget.
//!
//! - `dead_letter` (default): write the record and the reason to the dead-letter destination
//!   and go on.
//! - `fail`: stop the run at the first bad record (positions before it are still committed).
//! - `skip`: drop the record but count it; the count is in the metrics and the run summary.
//!
//! Whatever the policy, a run that is *mostly* failing is stopped: once `min_records` records
//! have been seen, a share of failures above `max_error_rate` stops it with an error (the
//! input is probably not what the config thinks it is).

use serde::{Deserialize, Serialize};

/// The per-pipeline policy for record-level errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Write to the dead-letter destination and go on.
    #[default]
    DeadLetter,
    /// Stop at the first bad record.
    Fail,
    /// Count and drop.
    Skip,
}

/// The share of failing records that stops a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorBudget {
    /// Largest tolerated share of bad records, 0.0 to 1.0 (`0.5`).
    pub max_error_rate: f64,
    /// Records to see before the rate is judged (`1000`).
    pub min_records: u64,
}

impl Default for ErrorBudget {
    fn default() -> Self {
        ErrorBudget {
            max_error_rate: 0.5,
            min_records: 1000,
        }
    }
}

/// The budget is spent.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "{failed} of {seen} records failed ({:.1}%, above max_error_rate {:.1}%): stopping; \
     check the dead-letter records for the reason, or raise max_error_rate",
    100.0 * *failed as f64 / *seen as f64, 100.0 * max_error_rate
)]
pub struct BudgetExceeded {
    /// Bad records so far.
    pub failed: u64,
    /// Records seen so far (good and bad).
    pub seen: u64,
    /// The limit.
    pub max_error_rate: f64,
}

impl ErrorBudget {
    /// Checks the running counts.
    pub fn check(&self, good: u64, failed: u64) -> Result<(), BudgetExceeded> {
        let seen = good + failed;
        if seen >= self.min_records.max(1) && failed as f64 > self.max_error_rate * seen as f64 {
            return Err(BudgetExceeded {
                failed,
                seen,
                max_error_rate: self.max_error_rate,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_waits_for_min_records_then_judges_the_rate() {
        let b = ErrorBudget {
            max_error_rate: 0.1,
            min_records: 100,
        };
        assert!(b.check(0, 50).is_ok(), "too few records to judge");
        assert!(b.check(90, 10).is_ok(), "exactly 10% is tolerated");
        let err = b.check(89, 11).unwrap_err();
        assert_eq!(err.failed, 11);
        assert!(
            err.to_string().contains("11 of 100 records failed (11.0%"),
            "{err}"
        );
    }
}
