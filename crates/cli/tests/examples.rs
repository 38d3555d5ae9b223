//! The guide's examples (`examples/file_ingestion/`) run as the README says, with the results
//! the README promises.

mod common;

use std::path::Path;

use common::{int_column, run_ok};

/// Copies an example folder (without output or state from a local run) into `to`.
fn copy_example(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/file_ingestion")
        .join(name);
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let file_name = entry.file_name();
            if file_name == "output" || file_name == ".tributary" {
                continue;
            }
            let target = to.join(&file_name);
            if entry.path().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    copy(&from, to);
}

fn summary(dir: &Path) -> serde_json::Value {
    let out = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dead_letters(dir: &Path, pipeline: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!(".tributary/dead_letter/{pipeline}.ndjson")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn csv_landing_folder_evolves_and_reads_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("csv", dir.path());
    let s = summary(dir.path());
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"], &s["files_completed"]),
        (&7.into(), &1.into(), &3.into()),
        "{s}"
    );
    assert_eq!(
        s["schema_changes"][1]["change"],
        "added coupon; amount Int64 → Float64"
    );
    let dead = dead_letters(dir.path(), "orders_landing");
    assert!(
        dead[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("data/landing/orders-2024-02.csv:3"),
        "{dead:?}"
    );
    assert_eq!(dead[0]["message"], "line 3: expected 6 fields, found 4");
    let mut ids = int_column(&dir.path().join("output/orders"), "order_id");
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 6, 7, 8]);

    let discover = run_ok(&["discover", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(discover.stdout).unwrap();
    assert!(text.contains("3 files"), "{text}");
    assert!(
        text.contains("schema v2 recorded")
            && text.contains(": added coupon; amount Int64 → Float64"),
        "{text}"
    );
    let show = run_ok(&["state", "show", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(show.stdout).unwrap();
    assert!(text.contains("files ingested: 3"), "{text}");

    let again = summary(dir.path());
    assert_eq!(
        (&again["rows_out"], &again["files_completed"]),
        (&0.into(), &0.into())
    );
}

#[test]
fn json_event_files_nest_widen_and_dead_letter_the_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("json", dir.path());
    let s = summary(dir.path());
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"], &s["files_completed"]),
        (&4.into(), &1.into(), &2.into()),
        "{s}"
    );
    let change = s["schema_changes"][1]["change"].as_str().unwrap();
    assert!(change.contains("props Struct"), "{change}");
    let dead = dead_letters(dir.path(), "events");
    assert!(
        dead[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("data/events/2024-05-02.ndjson:3"),
        "{dead:?}"
    );
    let mut ids = int_column(&dir.path().join("output/events"), "id");
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4]);
}
