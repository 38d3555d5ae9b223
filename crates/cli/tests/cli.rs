//! The `tributary` binary end to end: the quickstart, config errors, state commands, a
//! `kill -9` mid-run, and a graceful SIGTERM with metrics scraped while running.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;

use common::*;

fn copy_quickstart(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    std::fs::create_dir_all(to.join("data")).unwrap();
    std::fs::copy(from.join("pipeline.yaml"), to.join("pipeline.yaml")).unwrap();
    std::fs::copy(from.join("data/orders.csv"), to.join("data/orders.csv")).unwrap();
}

#[test]
fn quickstart_runs_end_to_end_and_a_rerun_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    let out = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["rows_out"], 998);
    assert_eq!(summary["dead_lettered"], 2);

    let output = dir.path().join("output/orders");
    let mut ids = int_column(&output, "order_id");
    ids.sort();
    let expected: Vec<i64> = (1..=1000).filter(|i| *i != 250 && *i != 731).collect();
    assert_eq!(ids, expected);

    let dead = std::fs::read_to_string(dir.path().join(".tributary/dead_letter/quickstart.ndjson"))
        .unwrap();
    assert!(
        dead.contains(r#""message":"line 252: expected 7 fields, found 8""#),
        "{dead}"
    );
    assert!(
        dead.contains(r#""location":"./data/orders.csv:733""#)
            || dead.contains("data/orders.csv:733"),
        "{dead}"
    );

    let files = parquet_files(&output);
    let again = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["rows_out"], 0);
    assert_eq!(parquet_files(&output), files, "a re-run writes no new file");

    // The text summary a person sees.
    let text = run_ok(&["run", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("pipeline quickstart: completed in"),
        "{text}"
    );
}

#[test]
fn state_show_and_reset_and_a_reset_rerun_overwrites_instead_of_duplicating() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    run_ok(&["run", "pipeline.yaml"], dir.path());
    let show = run_ok(&["state", "show", "pipeline.yaml"], dir.path());
    let show = String::from_utf8(show.stdout).unwrap();
    assert!(
        show.contains("stream orders: position {\"file\":\"data/orders.csv\",")
            && show.contains("\"line\":1003,")
            && show.contains("\"offset\":62194,\"size\":62194}"),
        "{show}"
    );
    assert!(show.contains("schema v1"), "{show}");
    assert!(
        show.contains("files ingested: 1\n      data/orders.csv (62194 bytes)"),
        "{show}"
    );

    let reset = run_ok(&["state", "reset", "pipeline.yaml"], dir.path());
    assert!(
        String::from_utf8_lossy(&reset.stdout).contains("forgot"),
        "reset says what it did"
    );
    let show = run_ok(&["state", "show", "quickstart"], dir.path());
    assert!(String::from_utf8_lossy(&show.stdout).contains("no committed positions"));

    let out = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows_out"], 998);
    assert_eq!(
        int_column(&dir.path().join("output/orders"), "order_id").len(),
        998
    );
}

#[test]
fn check_and_discover_report_what_they_found() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    let check = run_ok(&["check", "pipeline.yaml"], dir.path());
    assert!(String::from_utf8_lossy(&check.stdout)
        .starts_with("ok   pipeline.yaml: pipeline quickstart"));

    let discover = run_ok(&["discover", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(discover.stdout).unwrap();
    assert!(text.contains("stream orders"), "{text}");
    for line in [
        "order_id    Int64",
        "amount      Float64",
        "paid        Boolean",
        "ordered_at  Timestamp(µs)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    std::fs::remove_file(dir.path().join("data/orders.csv")).unwrap();
    let (code, text, _) = run_any(&["check", "pipeline.yaml"], dir.path());
    assert_eq!(code, Some(1));
    assert!(
        text.contains("FAIL pipeline.yaml") && text.contains("orders.csv: No such file"),
        "{text}"
    );
}

#[test]
fn config_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "pipeline: p\nsource:\n  kind: csv\n  path: in.csv\n  dleimiter: ';'\nsink: { kind: parquet, path: out }\n",
    )
    .unwrap();
    let (code, _, err) = run_any(&["run", "p.yaml"], dir.path());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("p.yaml:5:3: unknown field `dleimiter`, expected one of"),
        "{err}"
    );
    assert!(err.contains("5 |   dleimiter: ';'"), "{err}");

    std::fs::write(dir.path().join("q.yaml"), "pipeline: q\nsource: { kind: csv, path: \"${NO_SUCH_VAR_FOR_TRIBUARY}\" }\nsink: { kind: parquet, path: out }\n").unwrap();
    let (code, _, err) = run_any(&["run", "q.yaml"], dir.path());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("source.path: environment variable NO_SUCH_VAR_FOR_TRIBUARY is not set"),
        "{err}"
    );
}

fn big_pipeline(dir: &Path, name: &str, rows: i64) {
    write_csv(&dir.join("big.csv"), rows);
    std::fs::write(
        dir.join("pipeline.yaml"),
        format!(
            "pipeline: {name}\nsource:\n  kind: csv\n  path: big.csv\n  batch_size: 2000\nsink:\n  kind: parquet\n  path: out\n  file_rows: 10000\n"
        ),
    )
    .unwrap();
}

#[test]
fn kill_dash_9_mid_run_then_rerun_yields_exactly_the_input_rows() {
    const ROWS: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    big_pipeline(dir.path(), "crash", ROWS);
    let db = dir.path().join(".tributary/state.db");
    let out = dir.path().join("out/big");

    // Kill twice at different points, then let a third run finish.
    for min_commits_bytes in [1u64, 8_000_000] {
        let mut child = tributary()
            .args(["run", "pipeline.yaml", "--no-progress"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = committed_offset(&db, "crash").unwrap_or(0);
        poll("a commit past the last one", 120, || {
            committed_offset(&db, "crash").filter(|o| *o > before && *o >= min_commits_bytes)
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed: make the input larger"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let committed = committed_offset(&db, "crash").unwrap();
    let file_len = std::fs::metadata(dir.path().join("big.csv")).unwrap().len();
    assert!(committed < file_len, "the kills happened mid-file");

    let done = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files were cleaned up");
    let ids = int_column(&out, "id");
    assert_exact_ids(&ids, ROWS);
}

#[test]
fn kill_dash_9_across_a_folder_of_files_into_partitions_loses_and_repeats_nothing() {
    const FILES: i64 = 40;
    const PER_FILE: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let landing = dir.path().join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    for f in 0..FILES {
        let mut text = String::with_capacity(PER_FILE as usize * 48);
        for i in f * PER_FILE..(f + 1) * PER_FILE {
            text.push_str(&format!(
                "{{\"id\": {i}, \"bucket\": \"b{}\", \"v\": {{\"x\": {}}}}}\n",
                i % 3,
                i % 1000
            ));
        }
        std::fs::write(landing.join(format!("events-{f:03}.ndjson")), text).unwrap();
    }
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        "pipeline: folder\nsource:\n  kind: json\n  path: landing/\n  stream: events\n  batch_size: 2000\nsink:\n  kind: parquet\n  path: out\n  file_rows: 10000\n  partition_by: [bucket]\ncommit_interval: 50ms\n",
    )
    .unwrap();
    let db = dir.path().join(".tributary/state.db");
    // Kill after some files are in the ledger, then again after more.
    for ledger_at_least in [3usize, 15] {
        let mut child = tributary()
            .args(["run", "pipeline.yaml", "--no-progress"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        poll("files in the ledger", 120, || {
            (ledger_files(&db, "folder", "events") >= ledger_at_least).then_some(())
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed: make the input larger"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(
        ledger_files(&db, "folder", "events") < FILES as usize,
        "killed mid-folder"
    );

    let done = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(ledger_files(&db, "folder", "events"), FILES as usize);
    let out = dir.path().join("out/events");
    let mut ids = int_column(&out, "id");
    ids.sort();
    assert_exact_ids(&ids, FILES * PER_FILE);
    // Each id is in its bucket's folder.
    for b in 0..3 {
        let part = int_column(&out.join(format!("bucket=b{b}")), "id");
        assert!(part.iter().all(|i| i % 3 == b), "bucket b{b}");
    }
    // The ledger has every file: a rerun reads nothing.
    let again = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["rows_out"], 0);
}

#[test]
fn sigterm_drains_commits_and_exits_zero_with_metrics_served_meanwhile() {
    const ROWS: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    big_pipeline(dir.path(), "graceful", ROWS);
    let db = dir.path().join(".tributary/state.db");
    let mut child = tributary()
        .args([
            "run",
            "pipeline.yaml",
            "--no-progress",
            "--report",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = poll("the metrics address in the log", 60, || {
        let line = rx.try_recv().ok()?;
        let rest = line.split("http://").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    });
    poll("a first commit", 120, || committed_offset(&db, "graceful"));

    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("tributary_records_in_total{pipeline=\"graceful\",stream=\"big\"}"),
        "{body}"
    );
    assert!(
        body.contains("tributary_commits_total{pipeline=\"graceful\"}"),
        "{body}"
    );
    assert!(
        body.contains("tributary_bytes_out_total{pipeline=\"graceful\",stream=\"big\"}"),
        "{body}"
    );
    assert!(
        body.contains("tributary_batch_latency_seconds_count{pipeline=\"graceful\"}"),
        "{body}"
    );

    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before SIGTERM: make the input larger"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "graceful stop exits 0");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["status"], "stopped");
    let written = summary["rows_out"].as_i64().unwrap();
    assert!(
        written > 0 && written < ROWS,
        "stopped mid-run ({written} rows)"
    );
    // Everything read was flushed and committed: the output holds exactly the rows before the
    // committed position, and the committed position matches the summary.
    let out = dir.path().join("out/big");
    assert_eq!(int_column(&out, "id").len() as i64, written);
    assert_eq!(
        summary["positions"]["big"]["offset"].as_u64(),
        committed_offset(&db, "graceful")
    );

    run_ok(&["run", "pipeline.yaml"], dir.path());
    assert_exact_ids(&int_column(&out, "id"), ROWS);
}

#[test]
fn dead_letters_replay_once_the_cause_is_fixed_and_a_replay_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    run_ok(&["run", "pipeline.yaml"], dir.path());
    let show = run_ok(&["dlq", "show", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(show.stdout).unwrap();
    assert!(
        text.contains("2 dead letters") && text.contains("stream orders: 2"),
        "{text}"
    );

    // Nothing fixed yet: both fail again, with the new reason, appended to the same file.
    let replay = |dir: &Path| -> serde_json::Value {
        let out = run_ok(&["dlq", "replay", "pipeline.yaml", "--report", "json"], dir);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = replay(dir.path());
    assert_eq!(
        (&first["rows_out"], &first["dead_lettered"]),
        (&0.into(), &2.into()),
        "{first}"
    );
    let dlq = dir.path().join(".tributary/dead_letter/quickstart.ndjson");
    let dead = tributary_core::dead_letter::NdjsonDeadLetter::read_all(&dlq).unwrap();
    assert_eq!(dead.len(), 4);
    assert!(dead[3].message.starts_with("replay: "), "{:?}", dead[3]);
    assert!(
        dead[3].message.contains("(first failure: "),
        "{:?}",
        dead[3]
    );

    // Fix one cause: `n/a` means null. The replay writes that row; the decimal comma fails
    // again (it really is a broken row). Only the last failures are tried: the originals are
    // already replayed.
    let yaml = std::fs::read_to_string(dir.path().join("pipeline.yaml")).unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        yaml.replace(
            "  columns:\n",
            "  null_values: [\"\", \"n/a\"]\n  columns:\n",
        ),
    )
    .unwrap();
    let second = replay(dir.path());
    assert_eq!(
        (
            &second["rows_out"],
            &second["dead_lettered"],
            &second["rows_in"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "{second}"
    );
    let mut ids = int_column(&dir.path().join("output/orders"), "order_id");
    ids.sort();
    assert_eq!(ids.len(), 999);
    assert!(ids.contains(&731), "the n/a row is in the output now");

    let third = replay(dir.path());
    assert_eq!(
        (&third["rows_out"], &third["dead_lettered"]),
        (&0.into(), &1.into()),
        "{third}"
    );
    let ids_after = int_column(&dir.path().join("output/orders"), "order_id");
    assert_eq!(ids_after.len(), 999, "nothing replayed twice");
}

#[test]
fn json_dead_letters_replay_under_a_policy_that_lets_them_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.ndjson"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    std::fs::write(
        dir.path().join("in/b.ndjson"),
        "{\"id\": 3, \"coupon\": \"X\"}\n{\"id\": 4}\n{\"id\": 5, \"coupon\": \"Y\"}\n",
    )
    .unwrap();
    let pipeline = |policy: &str| {
        format!(
            "pipeline: events\nsource: {{ kind: json, path: in/, stream: events }}\nsink: {{ kind: ndjson, path: out }}\nschema_policy: {policy}\n"
        )
    };
    std::fs::write(dir.path().join("p.yaml"), pipeline("freeze")).unwrap();
    let out = run_ok(&["run", "p.yaml", "--report", "json"], dir.path());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&3.into(), &2.into()),
        "{s}"
    );

    std::fs::write(dir.path().join("p.yaml"), pipeline("evolve")).unwrap();
    let out = run_ok(&["dlq", "replay", "p.yaml", "--report", "json"], dir.path());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&2.into(), &0.into()),
        "{s}"
    );
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for f in walk_files(&dir.path().join("out")) {
        let text = std::fs::read_to_string(f).unwrap();
        rows.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    }
    rows.sort_by_key(|r| r["id"].as_i64());
    let coupons: Vec<(i64, Option<&str>)> = rows
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["coupon"].as_str()))
        .collect();
    assert_eq!(
        coupons,
        [
            (1, None),
            (2, None),
            (3, Some("X")),
            (4, None),
            (5, Some("Y"))
        ]
    );
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}
