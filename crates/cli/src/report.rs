//! Run summaries for people (`--report text`); `--report json` prints [`RunSummary`] as is.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use tributary_core::runtime::{RunStatus, RunSummary};

/// Seconds since the epoch as RFC 3339.
pub fn timestamp(secs: i64) -> String {
    tributary_core::config::rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// Thousands separators for counts.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human summary of one run.
pub fn text(s: &RunSummary) -> String {
    let status = match s.status {
        RunStatus::Completed => "completed",
        RunStatus::Stopped => "stopped on request (all read data committed)",
        RunStatus::Failed => "FAILED (data before the error is committed)",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {}: {status} in {:.2} s",
        s.pipeline, s.duration_secs
    );
    let _ = writeln!(
        out,
        "  rows        {} read, {} written ({:.0} rows/s)",
        count(s.rows_in),
        count(s.rows_out),
        s.rows_per_sec,
    );
    let _ = writeln!(
        out,
        "  bytes       {:.1} MB read ({:.1} MB/s), {:.1} MB of Arrow data written",
        s.bytes_in as f64 / 1e6,
        s.mb_per_sec,
        s.bytes_out as f64 / 1e6
    );
    if s.dead_lettered > 0 || s.skipped > 0 {
        let dest = s.dead_letter_destination.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "  bad records {} dead-lettered to {dest}, {} skipped",
            count(s.dead_lettered),
            count(s.skipped)
        );
    } else {
        let _ = writeln!(out, "  bad records none");
    }
    if s.files_completed > 0 {
        let _ = writeln!(out, "  files       {} completed", count(s.files_completed));
    }
    if s.retries > 0 {
        let _ = writeln!(out, "  retries     {}", count(s.retries));
    }
    for c in &s.schema_changes {
        let _ = writeln!(
            out,
            "  schema      {} v{}{}",
            c.stream,
            c.version,
            if c.version == 1 {
                " (first)".to_string()
            } else if c.change.is_empty() {
                " (changed)".to_string()
            } else {
                format!(" ({})", c.change)
            }
        );
    }
    for (stream, position) in &s.positions {
        let _ = writeln!(out, "  position    {stream} @ {position}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
    }
}
