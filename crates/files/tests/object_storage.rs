//! The file sources on S3-compatible object storage: a real S3 API on loopback (moto, started
//! by `scripts/services`; `TRIBUTARY_S3_ENDPOINT`). A missing server fails these tests.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::RecordBatch;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_core::config::VarStr;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::{Pipeline, PipelineSettings, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_core::Source;
use tributary_files::csv::{CsvSource, CsvSourceConfig};
use tributary_files::excel::{ExcelSource, ExcelSourceConfig};
use tributary_files::input::{FilePosition, FileSet};
use tributary_files::object::S3Options;
use tributary_files::parquet::{
    ParquetSink, ParquetSinkConfig, ParquetSource, ParquetSourceConfig,
};
use tributary_files::TextPosition;

fn endpoint() -> String {
    std::env::var("TRIBUTARY_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "TRIBUTARY_S3_ENDPOINT is not set: run the tests with scripts/test, which starts moto"
        )
    })
}

fn options() -> S3Options {
    S3Options {
        endpoint: Some(VarStr::new(endpoint())),
        region: Some("us-east-1".into()),
        access_key_id: Some(VarStr::new("testing")),
        secret_access_key: Some(VarStr::new("testing")),
        allow_http: None,
    }
}

/// A new, empty bucket with a unique name (S3 CreateBucket is a bare PUT, path-style).
fn bucket() -> String {
    let name = format!(
        "t-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let addr = endpoint().trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        tcp,
        "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket: {answer}");
    name
}

fn store(bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
    )
}

async fn put(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    store
        .put(&ObjectPath::from(key), PutPayload::from(bytes))
        .await
        .unwrap();
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn run(&self, source: Box<dyn Source>) -> RunSummary {
        Pipeline::new(
            PipelineSettings::new("s3"),
            source,
            Box::new(ParquetSink::new(ParquetSinkConfig::new("out"), self.dir.path()).unwrap()),
            Box::new(NdjsonDeadLetter::new(self.path("dlq.ndjson"))),
            Arc::new(SqliteStateStore::open(self.path("state.db")).unwrap()),
        )
        .run()
        .await
        .unwrap()
    }

    fn csv(&self, url: &str) -> Box<dyn Source> {
        let mut c = CsvSourceConfig::new(url);
        c.stream = Some("orders".into());
        c.s3 = Some(options());
        Box::new(CsvSource::new(c, self.dir.path()).unwrap())
    }

    fn ids(&self, stream: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.path("out").join(stream))
            .unwrap()
            .flatten()
        {
            let batches: Vec<RecordBatch> =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(e.path()).unwrap())
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap())
                    .collect();
            for b in batches {
                out.extend(
                    b.column(0)
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
            }
        }
        out.sort();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_objects_by_glob_with_a_ledger_of_etags() {
    let b = bucket();
    let s = store(&b);
    put(&s, "landing/orders-1.csv", b"id,name\n1,a\n2,b\n".to_vec()).await;
    put(&s, "landing/orders-2.csv.gz", gzip("id,name\n3,c\n4,d\n")).await;
    put(&s, "landing/other.csv", b"id,name\n99,x\n".to_vec()).await;
    put(&s, "landing/sub/orders-9.csv", b"id,name\n98,y\n".to_vec()).await;
    let f = Fixture::new();
    let url = format!("s3://{b}/landing/orders-*.csv*");

    let first = f.run(f.csv(&url)).await;
    assert_eq!((first.rows_out, first.files_completed), (4, 2), "{first:?}");
    assert_eq!(f.ids("orders"), [1, 2, 3, 4]);
    let ledger = SqliteStateStore::open(f.path("state.db"))
        .unwrap()
        .files("s3", "orders")
        .unwrap();
    assert_eq!(ledger[0].path, format!("s3://{b}/landing/orders-1.csv"));
    assert!(ledger[0].etag.is_some(), "{ledger:?}");

    // Nothing new: nothing read.
    assert_eq!(f.run(f.csv(&url)).await.rows_out, 0);

    // A replaced object (new ETag) is read again, whole; a new one is read.
    put(
        &s,
        "landing/orders-1.csv",
        b"id,name\n1,a\n2,b\n5,e\n".to_vec(),
    )
    .await;
    put(&s, "landing/orders-3.csv", b"id,name\n6,f\n".to_vec()).await;
    let third = f.run(f.csv(&url)).await;
    assert_eq!((third.rows_out, third.files_completed), (4, 2), "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_object_resumes_with_a_ranged_read() {
    let b = bucket();
    let s = store(&b);
    let body = "id,name\n1,a\n2,b\n3,c\n";
    put(&s, "in/orders.csv", body.as_bytes().to_vec()).await;
    let f = Fixture::new();
    let url = format!("s3://{b}/in/orders.csv");
    // What an earlier run that stopped after the row of id 1 committed: byte 12, line 3.
    let listed = FileSet::configure(
        f.dir.path(),
        &url,
        tributary_files::input::Compression::Auto,
        Some(&options()),
    )
    .unwrap()
    .list()
    .unwrap();
    let at = listed[0].position(TextPosition {
        offset: 12,
        line: 3,
    });
    let decoded: FilePosition<TextPosition> = at.decode().unwrap();
    assert!(decoded.etag.is_some(), "{at}");
    SqliteStateStore::open(f.path("state.db"))
        .unwrap()
        .commit_positions("s3", &[("orders", &at)], &[])
        .unwrap();
    let s = f.run(f.csv(&url)).await;
    assert_eq!(s.rows_out, 2, "{s:?}");
    assert_eq!(f.ids("orders"), [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_and_excel_objects_are_read_through_a_local_copy() {
    let b = bucket();
    let s = store(&b);
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/excel");
    put(
        &s,
        "books/simple.xlsx",
        std::fs::read(data.join("simple.xlsx")).unwrap(),
    )
    .await;
    let f = Fixture::new();
    let mut c = ExcelSourceConfig::new(format!("s3://{b}/books/"));
    c.stream = Some("sheet".into());
    c.s3 = Some(options());
    let summary = f
        .run(Box::new(ExcelSource::new(c, f.dir.path()).unwrap()))
        .await;
    assert!(summary.rows_out > 0, "{summary:?}");
    assert_eq!(summary.files_completed, 1);

    // Round trip: the Parquet output of the Excel run, uploaded and read back by key prefix.
    let out = std::fs::read_dir(f.path("out/sheet"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    put(&s, "pq/part.parquet", std::fs::read(out.path()).unwrap()).await;
    let g = Fixture::new();
    let mut c = ParquetSourceConfig::new(format!("s3://{b}/pq"));
    c.stream = Some("copy".into());
    c.s3 = Some(options());
    let copy = g
        .run(Box::new(ParquetSource::new(c, g.dir.path()).unwrap()))
        .await;
    assert_eq!(copy.rows_out, summary.rows_out, "{copy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_with_the_url_and_a_hint() {
    let f = Fixture::new();
    let err = Pipeline::new(
        PipelineSettings::new("s3"),
        f.csv("s3://no-such-bucket-tributary/x/*.csv"),
        Box::new(ParquetSink::new(ParquetSinkConfig::new("out"), f.dir.path()).unwrap()),
        Box::new(NdjsonDeadLetter::new(f.path("dlq.ndjson"))),
        Arc::new(SqliteStateStore::open(f.path("state.db")).unwrap()),
    )
    .run()
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("s3://no-such-bucket-tributary/x/*.csv"),
        "{text}"
    );
    assert!(text.contains("source.s3"), "{text}");
}
